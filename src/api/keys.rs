//! The API key file (`--api-keys FILE`): its format (TOML `[[consumer]]` tables or JSON
//! `{"consumer": [...]}`), its checks, and errors that name the file and the line without
//! quoting its contents (keys are secrets).

use serde::Deserialize;
use std::path::Path;

/// Metrics label of every consumer of an open server (so no key may take the name).
pub const OPEN_LABEL: &str = "open";

/// Errors of the key file, reported at startup.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: {1}")]
    Parse(String, String),
    #[error("{0}: {1}")]
    Invalid(String, String),
}

/// One entry of the key file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The consumer's name: logs and metrics labels use it, never the key.
    pub name: String,
    /// The secret the consumer sends.
    pub key: String,
    /// Open shard/stream responses at most (default: `--max-streams-per-consumer`).
    #[serde(default)]
    pub max_streams: Option<usize>,
    /// Requests per second at most, with bursts of up to one second's worth (default: none).
    #[serde(default)]
    pub max_requests_per_s: Option<f64>,
    /// Share of the generator when consumers compete (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    consumer: Vec<KeyEntry>,
}

/// Largest `max_streams` of a key (and `--max-streams-per-consumer`): far above any real
/// deployment, far below what a semaphore can count.
pub const MAX_STREAMS: usize = 1 << 20;
/// Largest `weight` of a key (credits are `weight × max_batch_size` images per turn).
pub const MAX_WEIGHT: u32 = 1 << 16;

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// A parse error's position and kind, with anything quoted in the parser's message that could
/// be a key (16 characters or more: keys are never shorter) left out; field names stay.
fn parse_error_text(at: Option<(usize, usize)>, message: &str) -> String {
    let mut kind = String::new();
    let mut quoted: Option<(char, String)> = None;
    for ch in message.chars() {
        match &mut quoted {
            // An escaped quote inside a quoted value (`\"`) does not end it.
            Some((_, inner)) if inner.ends_with('\\') => {
                inner.pop();
                inner.push(ch);
            }
            Some((q, inner)) if ch == *q => {
                if inner.chars().count() < 16 {
                    kind.push(ch);
                    kind.push_str(inner);
                    kind.push(ch);
                } else {
                    kind.push('…');
                }
                quoted = None;
            }
            Some((_, inner)) => inner.push(ch),
            None if ch == '"' || ch == '`' => quoted = Some((ch, String::new())),
            None => kind.push(ch),
        }
    }
    if quoted.is_some() {
        kind.push('…');
    }
    let kind = kind.trim().trim_end_matches(',');
    let kind = if kind.is_empty() {
        "syntax error"
    } else {
        kind
    };
    match at {
        Some((l, c)) => format!("not a valid key file at line {l}, column {c}: {kind}"),
        None => format!("not a valid key file: {kind}"),
    }
}

/// Whether every user may read the file (anyone who reads a key file can act as every consumer
/// in it). A group-readable file is left alone: that is how a Kubernetes Secret reaches a
/// non-root container (`defaultMode: 0440` with the pod's `fsGroup`).
pub fn readable_by_others(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// Reads a key file: TOML (`[[consumer]]` tables) when its name ends in `.toml`, JSON
/// (`{"consumer": [...]}`) otherwise.
pub fn read_key_file(path: &Path) -> Result<Vec<KeyEntry>, KeyFileError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| KeyFileError::Read(p.clone(), e))?;
    // Parse errors name the place and the kind of problem only: the parsers' own messages quote
    // the offending line or value, which in this file may be a key.
    let file: KeyFile = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| {
            let at = e.span().map(|s| line_col(&text, s.start));
            KeyFileError::Parse(p.clone(), parse_error_text(at, e.message()))
        })?
    } else {
        serde_json::from_str(&text).map_err(|e| {
            let what = format!("{e}");
            let what = what.split(" at line ").next().unwrap_or("");
            KeyFileError::Parse(
                p.clone(),
                parse_error_text(Some((e.line(), e.column())), what),
            )
        })?
    };
    let invalid = |m: String| KeyFileError::Invalid(p.clone(), m);
    if file.consumer.is_empty() {
        return Err(invalid(
            "no consumers: a key file must list at least one".into(),
        ));
    }
    let mut names = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for c in &file.consumer {
        let ok_name = !c.name.is_empty()
            && c.name.len() <= 64
            && c.name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "_-.".contains(ch));
        if !ok_name {
            return Err(invalid(format!(
                "consumer name `{}`: use 1-64 ASCII letters, digits, `_`, `-` or `.`",
                c.name
            )));
        }
        if c.name == OPEN_LABEL {
            return Err(invalid(format!("consumer name `{OPEN_LABEL}` is reserved")));
        }
        if c.key.len() < 16 || c.key.chars().any(|ch| !ch.is_ascii_graphic()) {
            return Err(invalid(format!(
                "consumer `{}`: keys must be at least 16 printable ASCII characters, no spaces",
                c.name
            )));
        }
        if !names.insert(c.name.clone()) {
            return Err(invalid(format!("consumer name `{}` appears twice", c.name)));
        }
        if !keys.insert(c.key.clone()) {
            return Err(invalid(format!(
                "consumer `{}` reuses another consumer's key",
                c.name
            )));
        }
        if c.max_streams
            .is_some_and(|m| !(1..=MAX_STREAMS).contains(&m))
        {
            return Err(invalid(format!(
                "consumer `{}`: max_streams must be in 1..={MAX_STREAMS}",
                c.name
            )));
        }
        if c.weight.is_some_and(|w| !(1..=MAX_WEIGHT).contains(&w)) {
            return Err(invalid(format!(
                "consumer `{}`: weight must be in 1..={MAX_WEIGHT}",
                c.name
            )));
        }
        if c.max_requests_per_s
            .is_some_and(|r| !(r.is_finite() && r > 0.0 && r <= 1e9))
        {
            return Err(invalid(format!(
                "consumer `{}`: max_requests_per_s must be a positive number up to 1e9",
                c.name
            )));
        }
    }
    Ok(file.consumer)
}
