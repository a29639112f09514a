//! What the client prints for people: aligned tables, colour by hand (ANSI
//! codes, only when [`Paint`] is on), times, one line per event. Every
//! function reads the API's JSON leniently (a missing field prints `-`)
//! and returns text, so tests check it without a terminal.

use std::fmt::Write as _;

use serde_json::Value;

/// Whether to colour, decided once per run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Paint {
    on: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Style {
    Plain,
    Bold,
    Dim,
    Red,
    Green,
    Blue,
    Yellow,
}

// === impl Paint ===

impl Paint {
    pub fn new(on: bool) -> Paint {
        Paint { on }
    }

    fn apply(self, style: Style, text: &str) -> String {
        let code = match style {
            _ if !self.on => return text.to_string(),
            Style::Plain => return text.to_string(),
            Style::Bold => "1",
            Style::Dim => "2",
            Style::Red => "31",
            Style::Green => "32",
            Style::Blue => "34",
            Style::Yellow => "33",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

/// A pool name in its own colour.
fn pool_style(pool: &str) -> Style {
    match pool {
        "blue" => Style::Blue,
        "green" => Style::Green,
        _ => Style::Plain,
    }
}

/// An endpoint state (or a watch state, or a verdict) in the colour of its
/// meaning: good green, bad red, in between yellow.
fn state_style(state: &str) -> Style {
    match state {
        "healthy" | "passed" | "pass" | "yes" | "completed" | "switched" => Style::Green,
        "unhealthy" | "failed" | "fail" | "rolled_back" | "rollback_failed" | "aborted" => {
            Style::Red
        }
        "ejected" | "watching" | "inconclusive" | "running" | "paused" => Style::Yellow,
        "unknown" | "cancelled" => Style::Dim,
        _ => Style::Plain,
    }
}

// === table ===

/// One cell: its text and how to colour it. Widths count the text only.
pub(super) struct Cell {
    text: String,
    style: Style,
}

fn cell(text: impl Into<String>) -> Cell {
    Cell {
        text: text.into(),
        style: Style::Plain,
    }
}

fn styled(text: impl Into<String>, style: Style) -> Cell {
    Cell {
        text: text.into(),
        style,
    }
}

/// Rows of cells, each column as wide as its widest cell, two spaces
/// between columns, no trailing spaces.
pub(super) struct Table {
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A table whose first row is `header`, in bold.
    fn with_header(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| styled(*h, Style::Bold)).collect()],
        }
    }

    /// A table without a header (key-value lines).
    fn plain() -> Table {
        Table { rows: Vec::new() }
    }

    fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    fn render(&self, paint: Paint) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (i, c) in row.iter().enumerate() {
                widths[i] = widths[i].max(c.text.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, c) in row.iter().enumerate() {
                line.push_str(&paint.apply(c.style, &c.text));
                if i + 1 < row.len() {
                    let pad = widths[i] - c.text.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

// === time ===

/// Milliseconds since the Unix epoch, now.
pub(super) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long before `now` `at` was: `12s ago`, `3m ago`, `5h ago`, `2d ago`.
pub(super) fn ago(now_ms: u64, at_ms: u64) -> String {
    let s = now_ms.saturating_sub(at_ms) / 1000;
    match s {
        0 => "just now".to_string(),
        1..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// `at` as UTC, `2025-01-02T03:04:05.678Z`.
pub(super) fn utc(at_ms: u64) -> String {
    let (days, ms) = (at_ms / 86_400_000, at_ms % 86_400_000);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

// === fields ===

/// A field as text: strings as they are, numbers and booleans printed,
/// anything absent or null `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `flip blue->green, 3m ago` (with `by ACTOR` after the pools when
/// `actor`), or `-` before the first switch.
fn last_switch(record: &Value, now_ms: u64, actor: bool) -> String {
    if record.is_null() {
        return "-".to_string();
    }
    let mut s = format!(
        "{} {}->{}",
        str_of(&record["reason"]),
        str_of(&record["from"]),
        str_of(&record["to"])
    );
    if let (true, Some(by)) = (actor, record["actor"].as_str()) {
        let _ = write!(s, " by {by}");
    }
    if record["forced"] == true {
        s.push_str(" (forced)");
    }
    if let Some(at) = record["at_unix_ms"].as_u64() {
        let _ = write!(s, ", {}", ago(now_ms, at));
    }
    s
}

/// A percentage from the API (`10.0`, `2.5`) as people write it: `10%`,
/// `2.5%`; `-` when absent.
fn pct(v: &Value) -> String {
    match v.as_f64() {
        Some(p) if p.fract() == 0.0 => format!("{p:.0}%"),
        Some(p) => format!("{p:.1}%"),
        None => "-".to_string(),
    }
}

/// A split (`{"pool":"green","percent":10.0}`): `10% green`, or `-`.
fn split(v: &Value) -> String {
    if v.is_null() {
        return "-".to_string();
    }
    format!("{} {}", pct(&v["percent"]), str_of(&v["pool"]))
}

/// Milliseconds as people say them: `41s`, `2m05s`, `850ms`.
fn left(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{}s", ms / 1000),
        _ => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
    }
}

/// `97.5% of 1200` or `- of 0`: the share of compared pairs that agreed.
fn agreement(shadow: &Value) -> String {
    let compared = shadow["compared"].as_u64().unwrap_or(0);
    match shadow["agreement"].as_f64() {
        Some(a) => format!("{:.1}% of {compared}", a * 100.0),
        None => format!("- of {compared}"),
    }
}

// === status ===

/// `switchyard status`: one row per model (each given as its detail, the
/// answer of `GET /models/{name}`).
pub(super) fn models(details: &[Value], now_ms: u64, paint: Paint) -> String {
    if details.is_empty() {
        return "no models\n".to_string();
    }
    let watch = details.iter().any(|d| !d["watch"].is_null());
    let shadow = details.iter().any(|d| !d["shadow"].is_null());
    let splits = details
        .iter()
        .any(|d| !d["split"].is_null() || is_live(&d["rollout"]));
    let mut header = vec!["MODEL", "ACTIVE", "STANDBY", "IN FLIGHT", "LAST SWITCH"];
    if splits {
        header.push("SPLIT");
    }
    if watch {
        header.push("WATCH");
    }
    if shadow {
        header.push("SHADOW");
    }
    let mut table = Table::with_header(&header);
    for d in details {
        let (active, standby) = (str_of(&d["active"]), str_of(&d["standby"]));
        let mut row = vec![
            cell(str_of(&d["name"])),
            styled(active, pool_style(active)),
            styled(standby, pool_style(standby)),
            cell(text(&d["in_flight"])),
            cell(last_switch(&d["last_switch"], now_ms, false)),
        ];
        if splits {
            let mut shown = split(&d["split"]);
            let r = &d["rollout"];
            if is_live(r) {
                let _ = write!(
                    shown,
                    " (rollout {}, step {}/{})",
                    str_of(&r["state"]),
                    text(&r["step"]),
                    text(&r["steps"])
                );
            }
            row.push(cell(shown));
        }
        if watch {
            let state = str_of(&d["watch"]["state"]);
            row.push(styled(state, state_style(state)));
        }
        if shadow {
            row.push(match &d["shadow"] {
                Value::Null => cell("-"),
                s => cell(agreement(s)),
            });
        }
        table.row(row);
    }
    table.render(paint)
}

/// The line under `switchyard status`'s table about a shared state store
/// (`GET /models`' `state_store`): `None` for the file backend, which has
/// nothing to say until a write fails (and then the write's 500 says it).
pub(super) fn store(status: &Value, now_ms: u64, paint: Paint) -> Option<String> {
    if status["backend"] != "etcd" {
        return None;
    }
    let prefix = str_of(&status["prefix"]);
    let since = status["since_unix_ms"]
        .as_u64()
        .map_or_else(String::new, |at| {
            format!(" since {}", ago(now_ms, at).trim_end_matches(" ago"))
        });
    let mut line = if status["connected"] == true {
        format!(
            "state store: etcd {} (prefix {prefix}, revision {})",
            paint.apply(Style::Green, "connected"),
            text(&status["revision"])
        )
    } else {
        format!(
            "state store: etcd {}{since} (prefix {prefix}): switches are refused, traffic stays on the pools above",
            paint.apply(Style::Red, "disconnected"),
        )
    };
    if status["connected"] != true {
        if let Some(e) = status["last_error"].as_str() {
            let _ = write!(line, "\n  last error: {e}");
        }
    }
    line.push('\n');
    Some(line)
}

/// `switchyard status MODEL`: the model, its pools, its endpoints.
pub(super) fn model(d: &Value, now_ms: u64, paint: Paint) -> String {
    let (active, standby) = (str_of(&d["active"]), str_of(&d["standby"]));
    let mut about = Table::plain();
    about.row(vec![cell("model"), styled(str_of(&d["name"]), Style::Bold)]);
    about.row(vec![
        cell("active"),
        Cell {
            text: format!("{active} (standby {standby})"),
            style: pool_style(active),
        },
    ]);
    let route = match d["host"].as_str() {
        Some(host) => format!("{host} {}", str_of(&d["path_prefix"])),
        None => str_of(&d["path_prefix"]).to_string(),
    };
    about.row(vec![cell("route"), cell(route)]);
    let last = last_switch(&d["last_switch"], now_ms, true);
    about.row(vec![cell("last switch"), cell(last)]);
    if !d["split"].is_null() {
        about.row(vec![
            cell("split"),
            cell(format!(
                "{} of new requests to {}",
                pct(&d["split"]["percent"]),
                str_of(&d["split"]["pool"])
            )),
        ]);
    }
    if let Some(line) = rollout_line(&d["rollout"], now_ms) {
        let state = str_of(&d["rollout"]["state"]);
        about.row(vec![
            cell("rollout"),
            Cell {
                text: line,
                style: state_style(state),
            },
        ]);
    }
    let watch = &d["watch"];
    if !watch.is_null() {
        let state = str_of(&watch["state"]);
        let mut detail = format!(
            " ({}, {} requests, {:.1}% 5xx",
            str_of(&watch["pool"]),
            text(&watch["requests"]),
            watch["ratio_5xx"].as_f64().unwrap_or(0.0) * 100.0
        );
        if let Some(p99) = watch["p99_ms"].as_f64() {
            let _ = write!(detail, ", p99 {p99:.0} ms");
        }
        detail.push(')');
        about.row(vec![
            cell("watch"),
            Cell {
                text: format!("{state}{detail}"),
                style: state_style(state),
            },
        ]);
    }
    let shadow = &d["shadow"];
    if !shadow.is_null() {
        about.row(vec![
            cell("shadow"),
            cell(format!(
                "{} agree, {} mismatch, {} error",
                agreement(shadow),
                text(&shadow["mismatch"]),
                text(&shadow["error"])
            )),
        ]);
    }
    let mut out = about.render(paint);

    let mut pools = Table::with_header(&[
        "POOL",
        "ACTIVE",
        "HEALTHY",
        "IN FLIGHT",
        "DRAINED",
        "SERVED",
    ]);
    let mut endpoints = Table::with_header(&[
        "POOL",
        "ENDPOINT",
        "STATE",
        "IN FLIGHT",
        "SERVED",
        "LAST PROBE",
    ]);
    for name in ["blue", "green"] {
        let pool = &d["pools"][name];
        if pool.is_null() {
            continue;
        }
        let list = pool["endpoints"].as_array().map_or(&[][..], Vec::as_slice);
        let is_active = pool["active"] == true;
        let drained = match (is_active, pool["drained"].as_bool()) {
            (true, _) | (_, None) => cell("-"),
            (false, Some(true)) => styled("yes", Style::Green),
            (false, Some(false)) => styled("no", Style::Yellow),
        };
        pools.row(vec![
            styled(name, pool_style(name)),
            cell(if is_active { "yes" } else { "no" }),
            cell(format!(
                "{}/{}",
                text(&pool["healthy_endpoints"]),
                list.len()
            )),
            cell(text(&pool["in_flight"])),
            drained,
            cell(text(&pool["served"])),
        ]);
        for e in list {
            let state = str_of(&e["state"]);
            let probe = &e["last_probe"];
            let last = if probe.is_null() {
                "-".to_string()
            } else {
                let mut s = format!(
                    "{} in {:.1} ms",
                    str_of(&probe["result"]),
                    probe["latency_ms"].as_f64().unwrap_or(0.0)
                );
                if let Some(at) = probe["at_unix_ms"].as_u64() {
                    let _ = write!(s, ", {}", ago(now_ms, at));
                }
                s
            };
            endpoints.row(vec![
                styled(name, pool_style(name)),
                cell(str_of(&e["url"])),
                styled(state, state_style(state)),
                cell(text(&e["in_flight"])),
                cell(text(&e["served"])),
                cell(last),
            ]);
        }
    }
    out.push('\n');
    out.push_str(&pools.render(paint));
    out.push('\n');
    out.push_str(&endpoints.render(paint));
    out
}

// === split and rollout ===

/// Whether a rollout (as the API shows it) is running or paused.
fn is_live(rollout: &Value) -> bool {
    matches!(rollout["state"].as_str(), Some("running" | "paused"))
}

/// `switchyard weight`: what the split is now, and what it was.
pub(super) fn weight(body: &Value, paint: Paint) -> String {
    let model = str_of(&body["model"]);
    let active = str_of(&body["active"]);
    let shown = paint.apply(pool_style(active), active);
    let was = match &body["previous"] {
        Value::Null => "none".to_string(),
        p => format!("{} to {}", pct(&p["percent"]), str_of(&p["pool"])),
    };
    let unchanged = if body["changed"] == false {
        "; nothing changed"
    } else {
        ""
    };
    match &body["split"] {
        Value::Null => format!(
            "{model}: no split: {shown} (active) gets every new request (was {was}){unchanged}\n"
        ),
        s => {
            let share = s["percent"].as_f64().unwrap_or(0.0);
            let pool = str_of(&s["pool"]);
            format!(
                "{model}: {} of new requests to {}, {} to {shown} (active) (was {was}){unchanged}\n",
                pct(&s["percent"]),
                paint.apply(pool_style(pool), pool),
                pct(&Value::from(100.0 - share)),
            )
        }
    }
}

/// One line on a rollout: `running, step 2 of 4 (25% to green), 41s
/// left`, `aborted, step 2 of 4 (0% to green): step 2 aborted: ...`;
/// `None` without one.
fn rollout_line(r: &Value, now_ms: u64) -> Option<String> {
    if r.is_null() {
        return None;
    }
    let state = str_of(&r["state"]);
    let mut line = format!(
        "{state}, step {} of {} ({} to {})",
        text(&r["step"]),
        text(&r["steps"]),
        pct(&r["weight"]),
        str_of(&r["pool"])
    );
    match (state, r["left_ms"].as_u64()) {
        ("running", Some(ms)) => {
            let _ = write!(line, ", {} left", left(ms));
            if r["extended"] == true {
                line.push_str(" (extended: too few requests)");
            }
        }
        ("paused", Some(ms)) => {
            let _ = write!(line, ", {} left when resumed", left(ms));
        }
        _ => {}
    }
    if let Some(reason) = r["reason"].as_str() {
        let _ = write!(line, ": {reason}");
    }
    if let Some(at) = r["ended_unix_ms"].as_u64() {
        let _ = write!(line, " ({})", ago(now_ms, at));
    }
    Some(line)
}

/// `switchyard rollout ...`: where the rollout is, its steps and their
/// results, this instance's figures of the step, and every verdict.
pub(super) fn rollout(body: &Value, now_ms: u64, paint: Paint) -> String {
    let model = str_of(&body["model"]);
    let r = &body["rollout"];
    let Some(line) = rollout_line(r, now_ms) else {
        return format!(
            "{model}: no rollout yet (split {}); `switchyard rollout start {model}` starts one\n",
            split(&body["split"])
        );
    };
    let state = str_of(&r["state"]);
    let mut out = format!(
        "{model}: rollout of {} from {}: {}\n",
        str_of(&r["pool"]),
        str_of(&r["from"]),
        paint.apply(state_style(state), &line)
    );
    let verdicts = r["verdicts"].as_array().map_or(&[][..], Vec::as_slice);
    let mut steps = Table::with_header(&["STEP", "WEIGHT", "DURATION", "RESULT"]);
    let current = r["step"].as_u64().unwrap_or(0);
    for (i, s) in r["plan"].as_array().into_iter().flatten().enumerate() {
        let n = i as u64 + 1;
        let judged = verdicts
            .iter()
            .rev()
            .find(|v| v["step"].as_u64() == Some(n))
            .and_then(|v| v["result"].as_str());
        let result = match judged {
            Some(result) => result,
            None if n == current && is_live(r) => state,
            None if n == current && state == "completed" => "switched",
            None => "-",
        };
        steps.row(vec![
            cell(n.to_string()),
            cell(pct(&s["percent"])),
            cell(s["duration_ms"].as_u64().map_or("-".to_string(), left)),
            styled(result, state_style(result)),
        ]);
    }
    out.push('\n');
    out.push_str(&steps.render(paint));
    let figures = &r["figures"];
    if !figures.is_null() {
        let mut table = Table::with_header(&[
            "POOL",
            "REQUESTS",
            "5XX",
            "P99",
            "FIRST BYTE P99",
            "EVENTS",
            "EVENT GAP P99",
        ]);
        let ms = |v: &Value| v.as_f64().map_or("-".to_string(), |m| format!("{m:.0} ms"));
        for pool in [str_of(&r["pool"]), str_of(&r["from"])] {
            let f = &figures[pool];
            table.row(vec![
                styled(pool, pool_style(pool)),
                cell(text(&f["requests"])),
                cell(format!(
                    "{:.1}%",
                    f["ratio_5xx"].as_f64().unwrap_or(0.0) * 100.0
                )),
                cell(ms(&f["p99_ms"])),
                cell(ms(&f["first_byte_p99_ms"])),
                cell(text(&f["events"])),
                cell(ms(&f["event_gap_p99_ms"])),
            ]);
        }
        let _ = write!(
            out,
            "\nstep {} so far, on this instance:\n",
            text(&figures["step"])
        );
        out.push_str(&table.render(paint));
    }
    if !verdicts.is_empty() {
        out.push('\n');
        for v in verdicts {
            let result = str_of(&v["result"]);
            let _ = writeln!(
                out,
                "{}",
                paint.apply(state_style(result), str_of(&v["reason"]))
            );
        }
    }
    out
}

/// The progress line of a followed rollout: `iris: step 2 of 4 (25% to
/// green) running, 41s left; green 412 req 0.0% 5xx p99 84 ms; blue ...`.
pub(super) fn rollout_progress(body: &Value) -> String {
    let r = &body["rollout"];
    let mut line = format!(
        "{}: step {} of {} ({} to {}) {}",
        str_of(&body["model"]),
        text(&r["step"]),
        text(&r["steps"]),
        pct(&r["weight"]),
        str_of(&r["pool"]),
        str_of(&r["state"])
    );
    if let Some(ms) = r["left_ms"].as_u64() {
        let _ = write!(line, ", {} left", left(ms));
    }
    for pool in [str_of(&r["pool"]), str_of(&r["from"])] {
        let f = &r["figures"][pool];
        if f.is_null() {
            continue;
        }
        let _ = write!(
            line,
            "; {pool} {} req {:.1}% 5xx",
            text(&f["requests"]),
            f["ratio_5xx"].as_f64().unwrap_or(0.0) * 100.0
        );
        if let Some(p99) = f["p99_ms"].as_f64() {
            let _ = write!(line, " p99 {p99:.0} ms");
        }
    }
    line
}

// === switches ===

/// What a switch did: `iris: green is active (was blue)`, the validation
/// and the drain, one line each.
pub(super) fn switched(body: &Value, paint: Paint) -> String {
    let model = str_of(&body["model"]);
    let active = str_of(&body["active"]);
    let standby = str_of(&body["standby"]);
    let shown = paint.apply(pool_style(active), active);
    let mut out = if body["switched"] == true {
        format!(
            "{model}: {shown} is active (was {})\n",
            str_of(&body["previous"])
        )
    } else {
        format!("{model}: {shown} was already active; nothing switched\n")
    };
    let validation = &body["validation"];
    if !validation.is_null() {
        let n = validation["checks"].as_array().map_or(0, Vec::len);
        let _ = writeln!(
            out,
            "validated {}: {n} check result(s) passed in {} ms",
            str_of(&validation["pool"]),
            text(&validation["duration_ms"])
        );
    }
    match body["drained"].as_bool() {
        Some(true) => {
            let _ = writeln!(out, "{standby} drained in {} ms", text(&body["waited_ms"]));
        }
        Some(false) => {
            let _ = writeln!(
                out,
                "{standby} still has {} request(s) in flight after {} ms",
                text(&body["in_flight"]),
                text(&body["waited_ms"])
            );
        }
        None => {}
    }
    out
}

/// The progress line of a `wait_drained` switch, from the model's detail:
/// how much is left in flight on the pool traffic left (the standby).
pub(super) fn drain_progress(detail: &Value) -> Option<String> {
    let standby = detail["standby"].as_str()?;
    let in_flight = detail["pools"][standby]["in_flight"].as_u64()?;
    Some(format!(
        "waiting for {standby} to drain: {in_flight} in flight"
    ))
}

/// A refusal for stderr: the API's reason, then what it names (the
/// endpoints the guard saw, the checks that failed).
pub(super) fn refusal(body: &Value) -> String {
    let reason = body["error"]
        .as_str()
        .unwrap_or("the admin API refused the call")
        // The API's hints, in the command line's words.
        .replace("?force=true", "--force")
        .replace("?validate=true", "--validate");
    let mut out = format!("refused: {reason}\n");
    for e in body["endpoints"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {} {}: {}",
            str_of(&body["pool"]),
            str_of(&e["url"]),
            str_of(&e["state"])
        );
    }
    out.push_str(&failures(&body["validation"]));
    out
}

/// Each failed check of a validation report, with what it expected.
fn failures(report: &Value) -> String {
    let mut out = String::new();
    for c in report["checks"].as_array().into_iter().flatten() {
        if c["passed"] == true {
            continue;
        }
        let _ = writeln!(
            out,
            "  check {:?} on {} failed:",
            str_of(&c["name"]),
            str_of(&c["endpoint"])
        );
        for f in c["failures"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "    {}", str_of(f));
        }
    }
    out
}

// === validation ===

/// `switchyard validate`: the verdict, every check, then each failure.
pub(super) fn report(report: &Value, paint: Paint) -> String {
    let checks = report["checks"].as_array().map_or(&[][..], Vec::as_slice);
    let failed = checks.iter().filter(|c| c["passed"] != true).count();
    let passed = report["passed"] == true;
    let verdict = if passed {
        paint.apply(Style::Green, "passed")
    } else {
        paint.apply(Style::Red, "FAILED")
    };
    let mut out = format!(
        "{}: pool {} {verdict}: {} of {} check result(s) passed in {} ms\n",
        str_of(&report["model"]),
        str_of(&report["pool"]),
        checks.len() - failed,
        checks.len(),
        text(&report["duration_ms"])
    );
    if !checks.is_empty() {
        let mut table = Table::with_header(&["CHECK", "ENDPOINT", "RESULT", "STATUS", "TIME"]);
        for c in checks {
            let result = if c["passed"] == true { "pass" } else { "fail" };
            table.row(vec![
                cell(str_of(&c["name"])),
                cell(str_of(&c["endpoint"])),
                styled(result, state_style(result)),
                cell(text(&c["status"])),
                cell(format!("{} ms", text(&c["duration_ms"]))),
            ]);
        }
        out.push('\n');
        out.push_str(&table.render(paint));
    }
    if failed > 0 {
        out.push('\n');
        out.push_str(&failures(report));
    }
    out
}

// === events ===

/// One event on one line: time, type, model, what happened.
pub(super) fn event(e: &Value, paint: Paint) -> String {
    let kind = str_of(&e["type"]);
    let time = e["at_unix_ms"]
        .as_u64()
        .map_or_else(|| "-".to_string(), utc);
    let model = e["model"].as_str().unwrap_or("-");
    let summary = match kind {
        "switch" => {
            let mut s = format!(
                "{} {}->{} by {}",
                str_of(&e["reason"]),
                str_of(&e["from"]),
                str_of(&e["to"]),
                str_of(&e["actor"])
            );
            if e["forced"] == true {
                s.push_str(" (forced)");
            }
            if let Some(note) = e["note"].as_str() {
                let _ = write!(s, ": {note}");
            }
            s
        }
        "validation" => format!(
            "pool {} {}",
            str_of(&e["pool"]),
            if e["passed"] == true {
                "passed"
            } else {
                "failed"
            }
        ),
        "health" => format!(
            "{} {} {}: {}",
            str_of(&e["pool"]),
            str_of(&e["endpoint"]),
            str_of(&e["state"]),
            str_of(&e["cause"])
        ),
        "ejection" => format!(
            "{} {} ejected after {} failed request(s), back in {} ms",
            str_of(&e["pool"]),
            str_of(&e["endpoint"]),
            text(&e["failures"]),
            text(&e["backoff_ms"])
        ),
        "discovery" => {
            let list = |v: &Value| {
                v.as_array()
                    .map(|a| a.iter().map(str_of).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            };
            format!(
                "{} endpoints by dns: added [{}], removed [{}]",
                str_of(&e["pool"]),
                list(&e["added"]),
                list(&e["removed"])
            )
        }
        "weight" => {
            let mut s = format!(
                "{} to {} (was {}) by {}",
                pct(&e["percent"]),
                str_of(&e["pool"]),
                pct(&e["previous"]),
                str_of(&e["actor"])
            );
            if e["origin"] == "store" {
                s.push_str(" (another instance)");
            }
            s
        }
        "rollout" => {
            let mut s = format!(
                "{} step {} of {} ({} to {}) by {}",
                str_of(&e["action"]),
                text(&e["step"]),
                text(&e["steps"]),
                pct(&e["percent"]),
                str_of(&e["pool"]),
                str_of(&e["actor"])
            );
            if let Some(reason) = e["reason"].as_str() {
                let _ = write!(s, ": {reason}");
            }
            s
        }
        "reload" => match e["error"].as_str() {
            Some(error) => format!("refused: {error}"),
            None => "applied".to_string(),
        },
        _ => e.to_string(),
    };
    let style = match kind {
        "switch" => Style::Bold,
        "rollout" if e["action"] == "aborted" => Style::Red,
        "ejection" => Style::Yellow,
        _ => Style::Plain,
    };
    format!(
        "{}  {}  {model}  {summary}\n",
        paint.apply(Style::Dim, &time),
        paint.apply(style, &format!("{kind:<10}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OFF: Paint = Paint { on: false };

    #[test]
    fn tables_align_on_text_not_colour_codes() {
        let mut t = Table::with_header(&["A", "BB"]);
        t.row(vec![styled("blue", Style::Blue), cell("x")]);
        t.row(vec![cell("g"), cell("")]);
        assert_eq!(t.render(OFF), "A     BB\nblue  x\ng\n");
        let on = t.render(Paint::new(true));
        assert!(on.contains("\x1b[34mblue\x1b[0m  x\n"), "{on:?}");
    }

    #[test]
    fn times_read_as_people_write_them() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(utc(1_735_689_600_000), "2025-01-01T00:00:00.000Z");
        assert_eq!(ago(10_000, 10_500), "just now");
        assert_eq!(ago(70_000, 0), "1m ago");
        assert_eq!(ago(90_000_000, 0), "1d ago");
    }

    #[test]
    fn a_model_list_shows_watch_and_shadow_only_when_present() {
        let plain = json!({"name":"iris","active":"blue","standby":"green","in_flight":0,
            "last_switch":null,"watch":null,"shadow":null});
        let out = models(std::slice::from_ref(&plain), 0, OFF);
        assert_eq!(
            out,
            "MODEL  ACTIVE  STANDBY  IN FLIGHT  LAST SWITCH\niris   blue    green    0          -\n"
        );
        let watched = json!({"name":"resnet","active":"green","standby":"blue","in_flight":3,
            "last_switch":{"reason":"flip","from":"blue","to":"green","at_unix_ms":0,"forced":false},
            "watch":{"state":"watching"},"shadow":{"compared":200,"agreement":0.995}});
        let out = models(&[plain, watched], 120_000, OFF);
        assert!(
            out.starts_with(
                "MODEL   ACTIVE  STANDBY  IN FLIGHT  LAST SWITCH               WATCH     SHADOW\n"
            ),
            "{out}"
        );
        assert!(out.contains("resnet  green   blue     3          flip blue->green, 2m ago  watching  99.5% of 200\n"), "{out}");
    }

    #[test]
    fn the_store_line_shows_etcd_and_why_it_is_out() {
        let file = json!({"backend": "file", "connected": true});
        assert_eq!(store(&file, 0, Paint::new(false)), None);
        let up = json!({"backend": "etcd", "connected": true, "prefix": "/sy/", "revision": 42});
        assert_eq!(
            store(&up, 0, Paint::new(false)).unwrap(),
            "state store: etcd connected (prefix /sy/, revision 42)\n"
        );
        let down = json!({"backend": "etcd", "connected": false, "prefix": "/sy/",
            "since_unix_ms": 1_000, "last_error": "cannot connect to etcd at http://e:2379: refused"});
        let line = store(&down, 13_000, Paint::new(false)).unwrap();
        assert!(
            line.starts_with(
                "state store: etcd disconnected since 12s (prefix /sy/): switches are refused"
            ),
            "{line}"
        );
        assert!(
            line.contains("last error: cannot connect to etcd at http://e:2379: refused"),
            "{line}"
        );
    }

    #[test]
    fn a_refusal_names_what_failed() {
        let body = json!({"error":"validation failed","validation":{"checks":[
            {"name":"smoke","endpoint":"http://e","passed":false,"failures":["status 500, expected 200"]},
            {"name":"ok","endpoint":"http://e","passed":true,"failures":[]}]}});
        assert_eq!(
            refusal(&body),
            "refused: validation failed\n  check \"smoke\" on http://e failed:\n    status 500, expected 200\n"
        );
    }

    #[test]
    fn events_are_one_line_each() {
        let e = json!({"id":7,"at_unix_ms":0,"type":"switch","model":"iris","from":"blue",
            "to":"green","reason":"flip","actor":"127.0.0.1:5","forced":false});
        assert_eq!(
            event(&e, OFF),
            "1970-01-01T00:00:00.000Z  switch      iris  flip blue->green by 127.0.0.1:5\n"
        );
    }

    #[test]
    fn a_rollout_shows_its_steps_figures_and_verdicts() {
        let body = json!({"model": "iris", "split": {"pool": "green", "percent": 25.0},
            "rollout": {"state": "running", "pool": "green", "from": "blue", "step": 2, "steps": 3,
                "weight": 25.0, "left_ms": 41_500, "extended": false,
                "plan": [{"percent": 5.0, "duration_ms": 30_000}, {"percent": 25.0, "duration_ms": 90_000},
                         {"percent": 100.0, "duration_ms": null}],
                "figures": {"step": 2,
                    "green": {"requests": 412, "ratio_5xx": 0.0, "p99_ms": 84.2, "first_byte_p99_ms": 20.0, "events": 0, "event_gap_p99_ms": null},
                    "blue": {"requests": 3705, "ratio_5xx": 0.001, "p99_ms": 80.0, "first_byte_p99_ms": 19.0, "events": 0, "event_gap_p99_ms": null}},
                "verdicts": [{"step": 1, "result": "passed", "reason": "step 1 passed: green 41 requests"}]}});
        let out = rollout(&body, 0, OFF);
        assert_eq!(
            out,
            "iris: rollout of green from blue: running, step 2 of 3 (25% to green), 41s left\n\
             \n\
             STEP  WEIGHT  DURATION  RESULT\n\
             1     5%      30s       passed\n\
             2     25%     1m30s     running\n\
             3     100%    -         -\n\
             \n\
             step 2 so far, on this instance:\n\
             POOL   REQUESTS  5XX   P99    FIRST BYTE P99  EVENTS  EVENT GAP P99\n\
             green  412       0.0%  84 ms  20 ms           0       -\n\
             blue   3705      0.1%  80 ms  19 ms           0       -\n\
             \n\
             step 1 passed: green 41 requests\n"
        );
        assert_eq!(
            rollout_progress(&body),
            "iris: step 2 of 3 (25% to green) running, 41s left; green 412 req 0.0% 5xx p99 84 ms; blue 3705 req 0.1% 5xx p99 80 ms"
        );
        let none = json!({"model": "iris", "split": null, "rollout": null});
        assert!(rollout(&none, 0, OFF).starts_with("iris: no rollout yet (split -)"));
    }

    #[test]
    fn a_weight_says_what_each_pool_gets() {
        let body = json!({"model": "iris", "active": "blue", "split": {"pool": "green", "percent": 2.5},
            "previous": {"pool": "green", "percent": 10.0}, "changed": true});
        assert_eq!(
            weight(&body, OFF),
            "iris: 2.5% of new requests to green, 97.5% to blue (active) (was 10% to green)\n"
        );
        let body = json!({"model": "iris", "active": "blue", "split": null, "previous": null, "changed": false});
        assert_eq!(
            weight(&body, OFF),
            "iris: no split: blue (active) gets every new request (was none); nothing changed\n"
        );
    }

    #[test]
    fn drain_progress_reads_the_standby() {
        let d = json!({"standby":"blue","pools":{"blue":{"in_flight":3}}});
        assert_eq!(
            drain_progress(&d).as_deref(),
            Some("waiting for blue to drain: 3 in flight")
        );
    }
}
