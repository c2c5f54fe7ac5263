//! YAML streams as Kubernetes tools read and write them: split a stream into its documents
//! before parsing any (so one bad document cannot hide the others), and write objects back with
//! sorted keys and block style.
//!
//! Both `kube-inject` and the object parser ([`crate::objects`]) use these, so a stream is cut
//! the same way everywhere and document numbers in messages agree.

use serde_json::Value;

/// One document of a stream, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDocument<'a> {
    /// 1-based index among the non-empty documents.
    pub index: usize,
    /// 1-based line of its first line in the stream.
    pub line: usize,
    /// Its text, without the separator.
    pub text: &'a str,
}

/// Splits a YAML stream on its document separators (`---` at the start of a line, alone or
/// followed by a space or a comment) and end markers (`...`). Documents holding only blank lines
/// and comments are dropped.
pub fn split_documents(input: &str) -> Vec<RawDocument<'_>> {
    let mut docs = Vec::new();
    let mut start = 0; // byte offset of the current document
    let mut start_line = 1;
    let mut offset = 0;
    let mut push = |start: usize, end: usize, line: usize| {
        let text = &input[start..end];
        let has_content = text.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && !t.starts_with('%')
        });
        if has_content {
            docs.push(RawDocument {
                index: 0,
                line,
                text,
            });
        }
    };
    for (n, line) in input.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_separator = bare == "---"
            || bare == "..."
            || bare.strip_prefix("---").is_some_and(|rest| {
                rest.starts_with([' ', '\t']) && rest.trim_start().starts_with('#')
            })
            || bare.trim_end() == "---";
        if is_separator {
            push(start, offset, start_line);
            start = offset + line.len();
            start_line = n + 2;
        }
        offset += line.len();
    }
    push(start, input.len(), start_line);
    for (i, d) in docs.iter_mut().enumerate() {
        d.index = i + 1;
    }
    // Report the first line with content, not the blank lines before it.
    for d in &mut docs {
        let skipped = d.text.lines().take_while(|l| l.trim().is_empty()).count();
        d.line += skipped;
    }
    docs
}

/// Serialises an object as YAML the way Kubernetes tools print it: keys sorted, block style,
/// multi-line strings as literal blocks, no line folding.
pub fn to_yaml(value: &Value) -> Result<String, serde_saphyr::SerializeError> {
    let options = serde_saphyr::ser_options! {
        folded_wrap_chars: usize::MAX,
        min_fold_chars: usize::MAX,
    };
    serde_saphyr::to_string_with_options(value, options)
}

/// The message of a YAML syntax error in `doc`, with its line counted from the start of the
/// stream: `not YAML: line 12 column 3: …`.
pub fn syntax_error(e: &serde_saphyr::Error, doc: &RawDocument<'_>) -> String {
    let message = e.without_snippet().to_string();
    let message = match e.location() {
        Some(loc) => {
            let suffix = format!(" at line {}, column {}", loc.line(), loc.column());
            let bare = message.strip_suffix(&suffix).unwrap_or(&message);
            // `doc.line` is the first non-blank line; the parser counts from the document start.
            let blank = doc.text.lines().take_while(|l| l.trim().is_empty()).count() as u64;
            let line = (doc.line as u64 + loc.line()).saturating_sub(1 + blank);
            format!("line {line} column {}: {bare}", loc.column())
        }
        None => message,
    };
    format!("not YAML: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_separator_lines_only() {
        let docs = split_documents(
            "---\na: 1\n---\n\n# only a comment\n--- # note\nb: |\n  ---x\n...\n---\nc: 3",
        );
        let texts: Vec<(usize, usize, &str)> =
            docs.iter().map(|d| (d.index, d.line, d.text)).collect();
        assert_eq!(
            texts,
            [(1, 2, "a: 1\n"), (2, 7, "b: |\n  ---x\n"), (3, 11, "c: 3")]
        );
    }
}
