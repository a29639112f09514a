//! A lock-free LIFO stack (Treiber's), for a pool's idle connections: the
//! connection used last is reused first, so the hot ones stay hot and the
//! ones a burst left behind idle out, and a request never takes the
//! connection that has idled longest (the likeliest to be closing under an
//! upstream's keep-alive timeout). Memory is reclaimed with crossbeam's
//! epochs; this is crossbeam-epoch's own Treiber stack example.

use std::mem::ManuallyDrop;
use std::ptr;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crossbeam_epoch::{self as epoch, Atomic, Owned};

pub struct Stack<T> {
    head: Atomic<Node<T>>,
}

struct Node<T> {
    data: ManuallyDrop<T>,
    next: Atomic<Node<T>>,
}

impl<T> Stack<T> {
    pub fn new() -> Stack<T> {
        Stack {
            head: Atomic::null(),
        }
    }

    pub fn push(&self, data: T) {
        let mut node = Owned::new(Node {
            data: ManuallyDrop::new(data),
            next: Atomic::null(),
        });
        let guard = epoch::pin();
        loop {
            let head = self.head.load(Relaxed, &guard);
            node.next.store(head, Relaxed);
            match self
                .head
                .compare_exchange(head, node, Release, Relaxed, &guard)
            {
                Ok(_) => return,
                Err(e) => node = e.new,
            }
        }
    }

    pub fn pop(&self) -> Option<T> {
        let guard = epoch::pin();
        loop {
            let head = self.head.load(Acquire, &guard);
            // SAFETY: `head` was loaded under `guard`, so the node it points
            // to is not freed before the guard drops (a popper that unlinks
            // it defers the free to a later epoch).
            let node = unsafe { head.as_ref() }?;
            let next = node.next.load(Relaxed, &guard);
            if self
                .head
                .compare_exchange(head, next, Relaxed, Relaxed, &guard)
                .is_ok()
            {
                // SAFETY: the compare-and-swap unlinked `head`: only this
                // thread takes its data (read out once, never dropped in
                // place: `ManuallyDrop`), and its memory is freed once no
                // pinned thread can still see it.
                unsafe {
                    guard.defer_destroy(head);
                    return Some(ManuallyDrop::into_inner(ptr::read(&node.data)));
                }
            }
        }
    }
}

impl<T> Default for Stack<T> {
    fn default() -> Stack<T> {
        Stack::new()
    }
}

impl<T> Drop for Stack<T> {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_last_pushed_is_the_first_popped() {
        let stack = Stack::new();
        assert_eq!(stack.pop(), None::<u32>);
        for i in 1..=3 {
            stack.push(i);
        }
        assert_eq!(stack.pop(), Some(3));
        stack.push(4);
        assert_eq!(stack.pop(), Some(4));
        assert_eq!(stack.pop(), Some(2));
        assert_eq!(stack.pop(), Some(1));
        assert_eq!(stack.pop(), None);
    }

    /// Counts its drops: every value pushed is dropped exactly once,
    /// whether popped or left in the stack when it drops.
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn threads_pushing_and_popping_at_once_lose_and_duplicate_nothing() {
        const THREADS: usize = 4;
        const EACH: usize = 20_000;
        let stack = Arc::new(Stack::new());
        let drops = Arc::new(AtomicUsize::new(0));
        let popped = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (stack, drops, popped) =
                    (Arc::clone(&stack), Arc::clone(&drops), Arc::clone(&popped));
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        stack.push(Counted(Arc::clone(&drops)));
                        if i % 2 == 0 && stack.pop().is_some() {
                            popped.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let mut left = 0;
        while stack.pop().is_some() {
            left += 1;
        }
        let popped = popped.load(Ordering::SeqCst);
        assert_eq!(popped + left, THREADS * EACH, "every push popped once");
        assert_eq!(drops.load(Ordering::SeqCst), THREADS * EACH);
    }

    #[test]
    fn values_left_in_a_dropped_stack_are_dropped() {
        let drops = Arc::new(AtomicUsize::new(0));
        let stack = Stack::new();
        for _ in 0..5 {
            stack.push(Counted(Arc::clone(&drops)));
        }
        drop(stack);
        // Reclamation of the nodes is deferred; the values are not.
        assert_eq!(drops.load(Ordering::SeqCst), 5);
    }
}
