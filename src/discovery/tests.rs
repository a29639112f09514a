use super::*;

fn want(authority: &str, source: usize) -> Want {
    Want {
        authority: authority.to_string(),
        host: "models.test:8000".to_string(),
        source,
    }
}

fn held(authority: &str, source: usize) -> Held<'_> {
    Held {
        authority,
        host: Some("models.test:8000"),
        source: Some(source),
    }
}

#[test]
fn diff_keeps_adds_and_removes_by_address() {
    let current = [held("10.0.0.4:8000", 0), held("10.0.0.5:8000", 0)];
    let answers = [Answer::Found(vec![
        want("10.0.0.5:8000", 0),
        want("10.0.0.6:8000", 0),
    ])];
    let plan = diff(&current, &wanted(&answers, &current));
    assert_eq!(plan.kept, vec![1]);
    assert_eq!(plan.removed, vec![0]);
    assert_eq!(plan.added, vec![want("10.0.0.6:8000", 0)]);
}

#[test]
fn the_same_answer_changes_nothing() {
    let current = [held("10.0.0.4:8000", 0), held("[fd00::4]:8000", 0)];
    let answers = [Answer::Found(vec![
        want("[fd00::4]:8000", 0),
        want("10.0.0.4:8000", 0),
    ])];
    let plan = diff(&current, &wanted(&answers, &current));
    assert_eq!(plan.kept, vec![0, 1]);
    assert!(plan.added.is_empty() && plan.removed.is_empty());
}

#[test]
fn a_failed_name_keeps_its_endpoints_and_a_gone_one_loses_them() {
    let current = [
        held("10.0.0.4:8000", 0),
        held("10.0.1.4:9000", 1),
        held("10.0.2.4:7000", 2),
    ];
    let answers = [
        Answer::Failed("timed out".into()),
        Answer::Gone("NXDOMAIN".into()),
        Answer::Found(vec![want("10.0.2.4:7000", 2)]),
    ];
    let plan = diff(&current, &wanted(&answers, &current));
    assert_eq!(plan.kept, vec![0, 2]);
    assert_eq!(plan.removed, vec![1]);
    assert!(plan.added.is_empty());
}

#[test]
fn an_address_two_names_give_is_one_endpoint() {
    let answers = [
        Answer::Found(vec![want("10.0.0.4:8000", 0)]),
        Answer::Found(vec![want("10.0.0.4:8000", 1), want("10.0.0.7:8000", 1)]),
    ];
    let w = wanted(&answers, &[]);
    assert_eq!(w, vec![want("10.0.0.4:8000", 0), want("10.0.0.7:8000", 1)]);
}

#[test]
fn an_empty_pool_adds_everything() {
    let answers = [Answer::Found(vec![want("127.0.0.1:1", 0)])];
    let plan = diff(&[], &wanted(&answers, &[]));
    assert_eq!(plan.added.len(), 1);
    assert!(plan.kept.is_empty() && plan.removed.is_empty());
}

#[test]
fn a_failed_name_keeps_its_endpoints_with_their_host() {
    let current = [held("10.0.0.4:8000", 0)];
    let answers = [Answer::Failed("timed out".into())];
    assert_eq!(wanted(&answers, &current), vec![want("10.0.0.4:8000", 0)]);
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn gone() -> Answer {
    Answer::Gone("no records".into())
}

fn failed() -> Answer {
    Answer::Failed("timed out".into())
}

#[test]
fn a_failure_of_either_family_is_a_failure() {
    // An IPv4-only name whose A query timed out while AAAA said NODATA:
    // not gone, whichever answered first.
    assert_eq!(both(Err(failed()), Err(gone())), Err(failed()));
    assert_eq!(both(Err(gone()), Err(failed())), Err(failed()));
    // Dual stack with AAAA lost: not the IPv4 addresses alone.
    assert_eq!(both(Ok(vec![ip("10.0.0.4")]), Err(failed())), Err(failed()));
    assert_eq!(both(Err(failed()), Ok(vec![ip("fd00::4")])), Err(failed()));
}

#[test]
fn gone_only_when_both_families_are_empty() {
    assert_eq!(both(Err(gone()), Err(gone())), Err(gone()));
    assert_eq!(
        both(Ok(vec![ip("10.0.0.4")]), Err(gone())),
        Ok(vec![ip("10.0.0.4")])
    );
    assert_eq!(
        both(Ok(vec![ip("10.0.0.4")]), Ok(vec![ip("fd00::4")])),
        Ok(vec![ip("10.0.0.4"), ip("fd00::4")])
    );
}
