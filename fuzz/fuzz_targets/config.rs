//! The config loader on arbitrary UTF-8: `Config::from_toml` must never
//! panic; it returns a config, or errors whose line and column point inside
//! the input (a column may be one past the end of its line: the end of input).
//!
//! Seeds: `config/*.toml` (fuzz/run.sh copies them into the corpus);
//! `fuzz/config.dict` holds the schema's keys and typical values.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use switchyard::Config;

const FILE: &str = "/fuzz/switchyard.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(src, Path::new(FILE)) {
        Ok(config) => {
            assert!(
                !config.models.is_empty(),
                "a config without models was accepted"
            );
            for m in &config.models {
                assert!(!m.blue.endpoints.is_empty() && !m.green.endpoints.is_empty());
                assert!(m.path_prefix.starts_with('/'), "{:?}", m.path_prefix);
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "Err with no error in it");
            let lines: Vec<&str> = src.split('\n').collect();
            for e in &errors {
                assert_eq!(e.file, Path::new(FILE));
                assert!(!e.message.is_empty(), "{e}");
                assert!(
                    (1..=lines.len()).contains(&e.line),
                    "line {} outside the input's {} lines: {e}",
                    e.line,
                    lines.len()
                );
                let len = lines[e.line - 1].len();
                assert!(
                    (1..=len + 1).contains(&e.column),
                    "column {} outside line {} ({len} bytes): {e}",
                    e.column,
                    e.line
                );
            }
        }
    }
});
