//! Golden tests of `inject_stream`: every `golden/<case>.yaml` (and the seed's
//! `examples/httpbin.yaml` and `examples/ubuntu.yaml`) injected with its config must give
//! `golden/<case>.yaml.injected` and, when there are warnings or errors,
//! `golden/<case>.yaml.messages`.
//!
//! `UPDATE_GOLDEN=1 cargo test -p inject --test golden` rewrites the expected files; read the
//! diff before committing it.

mod common;

use std::fs;

use pretty_assertions::assert_eq;

#[test]
fn golden_cases() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let cases = common::cases();
    assert!(cases.len() >= 25, "golden cases missing: {}", cases.len());
    let mut differ = Vec::new();
    for case in &cases {
        let (output, messages) = common::run(case);
        if update {
            fs::write(&case.expected_output, &output).expect("write golden");
            if messages.is_empty() {
                let _ = fs::remove_file(&case.expected_messages);
            } else {
                fs::write(&case.expected_messages, &messages).expect("write golden");
            }
            continue;
        }
        let expected = fs::read_to_string(&case.expected_output).unwrap_or_default();
        let expected_messages = fs::read_to_string(&case.expected_messages).unwrap_or_default();
        if expected == output && expected_messages == messages {
            println!("golden {}: match", case.name);
        } else {
            println!("golden {}: differ", case.name);
            differ.push(case);
        }
    }
    // Show each differing case's diff, then fail naming them all.
    for case in &differ {
        let (output, messages) = common::run(case);
        let expected = fs::read_to_string(&case.expected_output).unwrap_or_else(|_| {
            format!(
                "(no {}: run with UPDATE_GOLDEN=1)",
                case.expected_output.display()
            )
        });
        let expected_messages = fs::read_to_string(&case.expected_messages).unwrap_or_default();
        if expected != output {
            println!("--- case {}: output", case.name);
            println!(
                "{}",
                pretty_assertions::StrComparison::new(&expected, &output)
            );
        }
        if expected_messages != messages {
            println!("--- case {}: messages", case.name);
            println!(
                "{}",
                pretty_assertions::StrComparison::new(&expected_messages, &messages)
            );
        }
    }
    let names: Vec<&str> = differ.iter().map(|c| c.name.as_str()).collect();
    assert!(
        names.is_empty(),
        "{} of {} golden cases differ: {names:?}",
        names.len(),
        cases.len()
    );
}

/// Injecting an injected stream changes nothing: a template is never injected twice.
#[test]
fn injection_is_idempotent() {
    for case in common::cases() {
        let (once, _) = common::run(&case);
        let again = inject::inject_stream(&once, "again", &common::config_for(&case.name));
        assert!(
            again.errors.is_empty(),
            "case {}: {:?}",
            case.name,
            again.errors
        );
        assert_eq!(once, again.output, "case {}", case.name);
    }
}
