//! The sans-io core of a switch, [`ModelState::apply`]: what each kind of
//! switch does to the active pool and the history.

use super::*;

fn flip(expect: Option<PoolName>) -> SwitchOp {
    SwitchOp::Flip { expect }
}

fn run(state: &ModelState, op: SwitchOp, t: u64) -> ModelState {
    state.apply("iris", op, t, "test").unwrap().unwrap()
}

#[test]
fn flip_moves_to_the_standby_and_records_it() {
    let s = ModelState::new(PoolName::Blue);
    let s = run(&s, flip(None), 1);
    assert_eq!(s.active, PoolName::Green);
    assert_eq!(s.history.len(), 1);
    let r = s.last_switch.as_ref().unwrap();
    assert_eq!(
        (r.from, r.to, r.reason, r.at_unix_ms),
        (PoolName::Blue, PoolName::Green, SwitchReason::Flip, 1)
    );
}

#[test]
fn flip_with_a_wrong_expectation_is_refused() {
    let s = ModelState::new(PoolName::Green);
    assert!(matches!(
        s.apply("iris", flip(Some(PoolName::Blue)), 1, "t"),
        Err(SwitchError::Unexpected {
            expected: PoolName::Blue,
            active: PoolName::Green,
            ..
        })
    ));
    assert_eq!(
        run(&s, flip(Some(PoolName::Green)), 1).active,
        PoolName::Blue
    );
}

#[test]
fn activate_the_active_pool_changes_nothing() {
    let s = ModelState::new(PoolName::Blue);
    assert_eq!(
        s.apply("iris", SwitchOp::Activate(PoolName::Blue), 1, "t")
            .unwrap(),
        None
    );
    assert_eq!(
        run(&s, SwitchOp::Activate(PoolName::Green), 1).active,
        PoolName::Green
    );
}

#[test]
fn rollback_pops_history_until_empty() {
    let s = ModelState::new(PoolName::Blue);
    let s = run(&s, flip(None), 1); // green
    let s = run(&s, flip(None), 2); // blue
    let s = run(&s, SwitchOp::Rollback, 3);
    assert_eq!(s.active, PoolName::Green);
    assert_eq!(
        s.last_switch.as_ref().unwrap().reason,
        SwitchReason::Rollback
    );
    let s = run(&s, SwitchOp::Rollback, 4);
    assert_eq!(s.active, PoolName::Blue);
    assert!(s.history.is_empty());
    assert!(matches!(
        s.apply("iris", SwitchOp::Rollback, 5, "t"),
        Err(SwitchError::NoHistory { .. })
    ));
}

#[test]
fn an_auto_rollback_undoes_the_last_switch_and_is_remembered() {
    let s = ModelState::new(PoolName::Blue);
    let s = run(&s, flip(None), 1); // green
    let s = run(&s, SwitchOp::Activate(PoolName::Blue), 2);
    let s = run(&s, flip(None), 3); // green again
    let undo = s.last_switch.clone().unwrap();
    let op = SwitchOp::AutoRollback {
        undo,
        note: "5xx ratio 0.5".to_string(),
    };
    let s = run(&s, op, 4);
    assert_eq!(s.active, PoolName::Blue);
    let r = s.last_switch.clone().unwrap();
    assert_eq!(
        (r.from, r.to, r.reason, r.note.as_deref()),
        (
            PoolName::Green,
            PoolName::Blue,
            SwitchReason::AutoRollback,
            Some("5xx ratio 0.5")
        )
    );
    assert_eq!(s.last_auto_rollback, Some(r));
    // The switch undone left the history, as a manual rollback's does.
    assert_eq!(s.history.len(), 2);
    assert_eq!(s.history.back().unwrap().at_unix_ms, 2);
    // Later switches keep the last auto rollback for status.
    let s = run(&s, flip(None), 5);
    assert_eq!(s.last_auto_rollback.as_ref().unwrap().at_unix_ms, 4);
}

#[test]
fn an_auto_rollback_of_a_switch_no_longer_last_is_refused() {
    let s = ModelState::new(PoolName::Blue);
    let s = run(&s, flip(None), 1);
    let watched = s.last_switch.clone().unwrap();
    let op = SwitchOp::AutoRollback {
        undo: watched,
        note: String::new(),
    };
    // Someone flipped back, then forth: green is active again, but by a
    // newer switch than the one watched.
    let later = run(&run(&s, flip(None), 2), flip(None), 3);
    assert_eq!(later.active, PoolName::Green);
    assert!(matches!(
        later.apply("iris", op.clone(), 4, "watch"),
        Err(SwitchError::Superseded { .. })
    ));
    let rolled_back = run(&s, SwitchOp::Rollback, 2);
    assert!(matches!(
        rolled_back.apply("iris", op, 4, "watch"),
        Err(SwitchError::Superseded { .. })
    ));
}

#[test]
fn a_state_without_the_watch_fields_reads_and_writes_as_before() {
    let old = r#"{"active":"green","history":[{"from":"blue","to":"green","reason":"flip","at_unix_ms":1,"actor":"a"}],"last_switch":null}"#;
    let s: ModelState = serde_json::from_str(old).unwrap();
    assert_eq!(s.history[0].note, None);
    assert_eq!(s.last_auto_rollback, None);
    let written = serde_json::to_string(&s).unwrap();
    assert!(!written.contains("note"), "{written}");
    assert!(!written.contains("last_auto_rollback"), "{written}");
    assert_eq!(SwitchReason::AutoRollback.to_string(), "auto_rollback");
    assert_eq!(
        serde_json::to_string(&SwitchReason::AutoRollback).unwrap(),
        "\"auto_rollback\""
    );
}

#[test]
fn history_keeps_the_last_sixteen() {
    let mut s = ModelState::new(PoolName::Blue);
    for t in 0..40 {
        s = run(&s, flip(None), t);
    }
    assert_eq!(s.history.len(), HISTORY_LEN);
    assert_eq!(
        s.history.front().unwrap().at_unix_ms,
        40 - HISTORY_LEN as u64
    );

    // A state file edited to hold more is brought back to the cap.
    let mut long = s.clone();
    long.history.extend(s.history.iter().cloned());
    assert_eq!(long.history.len(), 2 * HISTORY_LEN);
    let next = run(&long, flip(None), 99);
    assert_eq!(next.history.len(), HISTORY_LEN);
    assert_eq!(next.history.back().unwrap().at_unix_ms, 99);
}
