//! How one parameter is declared and checked: its name, type, default, allowed range and
//! documentation. The sampling table ([`super::PARAMS`]) and every generator's own inputs
//! ([`crate::generator::GeneratorSpec::knobs`]) are lists of these, so a query parameter, an
//! export flag, an OpenAPI schema and a `/v1/info` default all come from one declaration.

use super::Limits;

/// A parameter's type, default and allowed values.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// An integer in `[min, max]`; `limit` lowers `max` to a server limit.
    Int {
        default: u64,
        min: u64,
        max: u64,
        limit: Option<fn(&Limits) -> u64>,
    },
    /// A finite number in `[min, max]` (`(min, max]` when `min_open`).
    Float {
        default: f64,
        min: f64,
        max: f64,
        min_open: bool,
    },
    /// One of a list of words.
    Choice {
        default: &'static str,
        values: &'static [&'static str],
    },
    /// Class ids and ranges (`0,3,7-9`); default: all classes.
    Classes,
    /// Walk names with optional scales (`zoom,shift_x:0.5`); default: every served walk.
    Walks,
}

/// One declared parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    /// Older spellings still accepted (clients may send them); answered as `name`.
    pub aliases: &'static [&'static str],
    pub kind: Kind,
    pub doc: &'static str,
}

/// A checked value of an `Int`, `Float` or `Choice` parameter.
#[derive(Debug, Clone, Copy)]
pub enum Value {
    Int(u64),
    Float(f64),
    Choice(&'static str),
}

impl PartialEq for Value {
    /// Bit equality for numbers: values that batch together must give the same pixels.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Choice(a), Value::Choice(b)) => a == b,
            _ => false,
        }
    }
}

impl Value {
    pub fn json(&self) -> serde_json::Value {
        match *self {
            Value::Int(v) => v.into(),
            Value::Float(v) => v.into(),
            Value::Choice(v) => v.into(),
        }
    }
}

/// A rejected parameter value; the message names the parameter and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

/// Checks an integer against `[min, max]`.
pub fn int_in(
    name: &str,
    raw: Option<&str>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ParamError> {
    let Some(s) = raw else { return Ok(default) };
    match s.parse::<u64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(ParamError(format!(
            "parameter `{name}` must be an integer in [{min}, {max}], got `{s}`"
        ))),
    }
}

impl Param {
    /// The parameter as messages name it: `` `name` ``, with its old names.
    pub fn label(&self) -> String {
        if self.aliases.is_empty() {
            format!("`{}`", self.name)
        } else {
            let old: Vec<String> = self.aliases.iter().map(|a| format!("`{a}`")).collect();
            format!("`{}` (old name {})", self.name, old.join(", "))
        }
    }

    /// Whether `name` is this parameter's name or one of its aliases.
    pub fn answers_to(&self, name: &str) -> bool {
        self.name == name || self.aliases.contains(&name)
    }

    /// The upper bound of an integer parameter under `limits`.
    pub fn int_max(&self, limits: &Limits) -> u64 {
        match self.kind {
            Kind::Int { max, limit, .. } => limit.map_or(max, |f| f(limits).min(max)),
            _ => unreachable!("`{}` is not an integer parameter", self.name),
        }
    }

    pub(crate) fn int(&self, raw: Option<&str>, limits: &Limits) -> Result<u64, ParamError> {
        match self.kind {
            Kind::Int { default, min, .. } => {
                int_in(self.name, raw, default, min, self.int_max(limits))
            }
            _ => unreachable!("`{}` is not an integer parameter", self.name),
        }
    }

    pub(crate) fn float(&self, raw: Option<&str>) -> Result<f64, ParamError> {
        let Kind::Float { default, .. } = self.kind else {
            unreachable!("`{}` is not a number parameter", self.name)
        };
        let Some(s) = raw else { return Ok(default) };
        match s.parse::<f64>() {
            Ok(v) if self.float_ok(v) => Ok(v),
            _ => Err(self.float_error(s)),
        }
    }

    /// Whether `v` lies in a number parameter's range.
    pub fn float_ok(&self, v: f64) -> bool {
        let Kind::Float {
            min, max, min_open, ..
        } = self.kind
        else {
            unreachable!("`{}` is not a number parameter", self.name)
        };
        v.is_finite() && (if min_open { v > min } else { v >= min }) && v <= max
    }

    /// The message for a number outside the range, `got` as the caller spelled it.
    pub fn float_error(&self, got: &str) -> ParamError {
        let Kind::Float {
            min, max, min_open, ..
        } = self.kind
        else {
            unreachable!("`{}` is not a number parameter", self.name)
        };
        ParamError(format!(
            "parameter {} must be a finite number in {}{min}, {max}], got `{got}`",
            self.label(),
            if min_open { "(" } else { "[" }
        ))
    }

    pub(crate) fn choice(&self, raw: Option<&str>) -> Result<&'static str, ParamError> {
        let Kind::Choice { default, values } = self.kind else {
            unreachable!("`{}` is not a choice parameter", self.name)
        };
        let s = raw.unwrap_or(default);
        values.iter().copied().find(|v| *v == s).ok_or_else(|| {
            ParamError(format!(
                "parameter `{}` must be one of {}, got `{s}`",
                self.name,
                values.join(", ")
            ))
        })
    }

    /// The checked value of an `Int`, `Float` or `Choice` parameter (`raw` absent = default).
    pub fn value(&self, raw: Option<&str>, limits: &Limits) -> Result<Value, ParamError> {
        Ok(match self.kind {
            Kind::Int { .. } => Value::Int(self.int(raw, limits)?),
            Kind::Float { .. } => Value::Float(self.float(raw)?),
            Kind::Choice { .. } => Value::Choice(self.choice(raw)?),
            Kind::Classes | Kind::Walks => unreachable!("`{}` is a list", self.name),
        })
    }

    /// The default as JSON (`null` for "all classes" and "every walk").
    pub fn default_json(&self) -> serde_json::Value {
        match self.kind {
            Kind::Int { default, .. } => default.into(),
            Kind::Float { default, .. } => default.into(),
            Kind::Choice { default, .. } => default.into(),
            Kind::Classes | Kind::Walks => serde_json::Value::Null,
        }
    }

    /// Whether the parameter is a list whose default is "all" (classes, walks).
    pub fn is_list(&self) -> bool {
        matches!(self.kind, Kind::Classes | Kind::Walks)
    }

    /// The declaration as `/v1/info` lists a generator's inputs.
    pub fn describe(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "name": self.name,
            "default": self.default_json(),
            "doc": self.doc,
        });
        match self.kind {
            Kind::Int { min, max, .. } => {
                v["type"] = "integer".into();
                v["min"] = min.into();
                v["max"] = max.into();
            }
            Kind::Float {
                min, max, min_open, ..
            } => {
                v["type"] = "number".into();
                v[if min_open { "exclusive_min" } else { "min" }] = min.into();
                v["max"] = max.into();
            }
            Kind::Choice { values, .. } => {
                v["type"] = "string".into();
                v["values"] = values.into();
            }
            Kind::Classes => v["type"] = "classes".into(),
            Kind::Walks => v["type"] = "walks".into(),
        }
        if !self.aliases.is_empty() {
            v["aliases"] = self.aliases.into();
        }
        v
    }
}
