//! Source patterns: brace expansion and resolution to a list of shard URLs or paths.

use super::LoaderError;
use std::path::{Path, PathBuf};

/// Expands `{a..b}` numeric ranges (zero padding kept when `a` is padded) and `{x,y}` lists, like
/// `braceexpand`. Anything after `?` (a query string) is kept as is on every URL.
pub fn expand(pattern: &str) -> Result<Vec<String>, LoaderError> {
    let (path, query) = match pattern.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pattern, None),
    };
    let mut out = vec![String::new()];
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .map(|c| open + c)
            .ok_or_else(|| LoaderError::Pattern(pattern.into(), "unclosed `{`".into()))?;
        let lit = &rest[..open];
        let inner = &rest[open + 1..close];
        if lit.contains('}') || inner.contains('{') {
            return Err(LoaderError::Pattern(
                pattern.into(),
                "nested or unbalanced braces".into(),
            ));
        }
        let alts: Vec<String> = if let Some((a, b)) = inner.split_once("..") {
            let (na, nb) = (
                a.parse::<u64>().map_err(|_| {
                    LoaderError::Pattern(pattern.into(), format!("`{a}` is not a number"))
                })?,
                b.parse::<u64>().map_err(|_| {
                    LoaderError::Pattern(pattern.into(), format!("`{b}` is not a number"))
                })?,
            );
            if na > nb {
                return Err(LoaderError::Pattern(
                    pattern.into(),
                    format!("empty range {a}..{b}"),
                ));
            }
            if nb - na > 10_000_000 {
                return Err(LoaderError::Pattern(
                    pattern.into(),
                    "range too large".into(),
                ));
            }
            let width = if a.starts_with('0') && a.len() > 1 {
                a.len()
            } else {
                0
            };
            (na..=nb).map(|n| format!("{n:0width$}")).collect()
        } else {
            inner.split(',').map(str::to_string).collect()
        };
        out = out
            .iter()
            .flat_map(|p| alts.iter().map(move |a| format!("{p}{lit}{a}")))
            .collect();
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err(LoaderError::Pattern(
            pattern.into(),
            "unbalanced `}`".into(),
        ));
    }
    Ok(out
        .into_iter()
        .map(|p| match query {
            Some(q) => format!("{p}{rest}?{q}"),
            None => format!("{p}{rest}"),
        })
        .collect())
}

/// The shards named by a source: an `http(s)://` pattern, a local file pattern, or a directory
/// (all `*.tar` inside, sorted). Several sources can be joined with `::`.
pub fn resolve(source: &str) -> Result<Vec<String>, LoaderError> {
    let mut all = Vec::new();
    for part in source.split("::") {
        if part.starts_with("http://") || part.starts_with("https://") {
            all.extend(expand(part)?);
            continue;
        }
        let p = Path::new(part);
        if p.is_dir() {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .map_err(|e| LoaderError::Io(part.into(), e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "tar"))
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(LoaderError::NoShards(part.into()));
            }
            all.extend(v);
        } else {
            for f in expand(part)? {
                if !Path::new(&f).is_file() {
                    return Err(LoaderError::Io(f, "no such file".into()));
                }
                all.push(f);
            }
        }
    }
    if all.is_empty() {
        return Err(LoaderError::NoShards(source.into()));
    }
    Ok(all)
}

/// Local path of a `file://` or plain path (helper for CLIs).
pub fn local_path(s: &str) -> PathBuf {
    PathBuf::from(s.strip_prefix("file://").unwrap_or(s))
}
