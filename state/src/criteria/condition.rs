//! Attribute conditions (`{"name", "op", "value"}`), compiled into value tests: the leaf of
//! user attribute, identity, device, attribution, location and event attribute criteria.
//! Reads `definition` and `values`; `compile` reads it.

use super::compiled::CompiledCondition;
use super::definition::*;
use super::values::*;
use crate::model::DAY_MS;
use chrono::NaiveDate;

/// A condition whose operator must be a string operator, exists or not_exists.
pub(super) fn string_test(cond: &Condition, path: &str) -> Result<Test, DefinitionError> {
    let compiled = compile_condition(cond, path)?;
    let numeric = |t: &Test| {
        matches!(
            t,
            Test::NumberCmp(..)
                | Test::NumberBetween(..)
                | Test::IsBool(_)
                | Test::VersionCmp(..)
                | Test::DateIn(..)
        )
    };
    match &compiled.test {
        Test::Not(inner) if numeric(inner) => {}
        t if !numeric(t) => return Ok(compiled.test),
        _ => {}
    }
    Err(DefinitionError::new(
        format!("{path}.op"),
        format!(
            "operator {} does not apply here: use a string operator, exists or not_exists",
            op_name(cond.op)
        ),
    ))
}

pub(super) fn parse_date(s: &str, field: &str) -> Result<i64, DefinitionError> {
    let date = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|_| {
        DefinitionError::new(
            field,
            format!("\"{s}\" is not a date in the form YYYY-MM-DD"),
        )
    })?;
    Ok(date
        .and_hms_opt(0, 0, 0)
        .map(|d| d.and_utc().timestamp_millis())
        .unwrap_or_default())
}

pub(super) fn compile_condition(
    cond: &Condition,
    path: &str,
) -> Result<CompiledCondition, DefinitionError> {
    if cond.workspace.is_some() {
        return Err(DefinitionError::new(
            format!("{path}.workspace"),
            "only user attribute, identity, event, consent, device, location and attribution criteria pick a workspace",
        ));
    }
    let name = cond.name.trim().to_lowercase();
    if name.is_empty() {
        return Err(DefinitionError::new(
            format!("{path}.name"),
            "must not be empty",
        ));
    }
    let value_field = format!("{path}.value");
    let string_value = || -> Result<String, DefinitionError> {
        match &cond.value {
            Some(serde_json::Value::String(s)) => Ok(s.to_lowercase()),
            Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
            Some(serde_json::Value::Bool(b)) => Ok(b.to_string()),
            Some(other) => Err(DefinitionError::new(
                &value_field,
                format!("operator {:?} needs a string, got {other}", cond.op),
            )),
            None => Err(DefinitionError::new(
                &value_field,
                format!("operator {} needs a value", op_name(cond.op)),
            )),
        }
    };
    let number_value = |v: Option<&serde_json::Value>| -> Result<f64, DefinitionError> {
        match v {
            Some(serde_json::Value::Number(n)) => n.as_f64().ok_or_else(|| {
                DefinitionError::new(&value_field, format!("{n} is not a finite number"))
            }),
            Some(serde_json::Value::String(s)) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .ok_or_else(|| {
                    DefinitionError::new(&value_field, format!("\"{s}\" is not a number"))
                }),
            Some(other) => Err(DefinitionError::new(
                &value_field,
                format!("operator {} needs a number, got {other}", op_name(cond.op)),
            )),
            None => Err(DefinitionError::new(
                &value_field,
                format!("operator {} needs a number", op_name(cond.op)),
            )),
        }
    };
    use std::cmp::Ordering::*;
    let test = match cond.op {
        Operator::Exists => Test::Exists,
        Operator::NotExists => Test::Not(Box::new(Test::Exists)),
        Operator::Contains => Test::Contains(string_value()?),
        Operator::DoesNotContain => Test::Not(Box::new(Test::Contains(string_value()?))),
        Operator::ExactMatch => Test::ExactMatch(string_value()?),
        Operator::DoesNotMatch => Test::Not(Box::new(Test::ExactMatch(string_value()?))),
        Operator::Pattern => Test::Pattern(string_value()?),
        Operator::Includes => Test::Includes(string_value()?),
        Operator::DoesNotInclude => Test::Not(Box::new(Test::Includes(string_value()?))),
        Operator::PartialMatch => Test::PartialMatch(string_value()?),
        Operator::Equals => match &cond.value {
            Some(serde_json::Value::Bool(b)) => Test::IsBool(*b),
            v => Test::NumberCmp(Equal, true, number_value(v.as_ref())?),
        },
        Operator::NotEquals => match &cond.value {
            Some(serde_json::Value::Bool(b)) => Test::Not(Box::new(Test::IsBool(*b))),
            v => Test::Not(Box::new(Test::NumberCmp(
                Equal,
                true,
                number_value(v.as_ref())?,
            ))),
        },
        Operator::GreaterThan => {
            Test::NumberCmp(Greater, false, number_value(cond.value.as_ref())?)
        }
        Operator::GreaterThanOrEqual => {
            Test::NumberCmp(Greater, true, number_value(cond.value.as_ref())?)
        }
        Operator::LessThan => Test::NumberCmp(Less, false, number_value(cond.value.as_ref())?),
        Operator::LessThanOrEqual => {
            Test::NumberCmp(Less, true, number_value(cond.value.as_ref())?)
        }
        Operator::Between => match &cond.value {
            Some(serde_json::Value::Array(bounds)) if bounds.len() == 2 => {
                let lo = number_value(bounds.first())?;
                let hi = number_value(bounds.get(1))?;
                if lo > hi {
                    return Err(DefinitionError::new(
                        &value_field,
                        format!("lower bound {lo} is above upper bound {hi}"),
                    ));
                }
                Test::NumberBetween(lo, hi)
            }
            _ => {
                return Err(DefinitionError::new(
                    &value_field,
                    "operator between needs [low, high]",
                ))
            }
        },
        Operator::DateBefore => Test::DateIn(i64::MIN, parse_date(&string_value()?, &value_field)?),
        Operator::DateAfter => Test::DateIn(parse_date(&string_value()?, &value_field)?, i64::MAX),
        Operator::DateOn => {
            let day = parse_date(&string_value()?, &value_field)?;
            Test::DateIn(day, day + DAY_MS)
        }
        Operator::DateBetween => match &cond.value {
            Some(serde_json::Value::Array(bounds)) if bounds.len() == 2 => {
                let text = |i: usize| bounds[i].as_str().unwrap_or_default().to_string();
                let from = parse_date(&text(0), &format!("{value_field}[0]"))?;
                let last = parse_date(&text(1), &format!("{value_field}[1]"))?;
                if last < from {
                    return Err(DefinitionError::new(
                        &value_field,
                        format!("{} is before {}", text(1), text(0)),
                    ));
                }
                Test::DateIn(from, last + DAY_MS)
            }
            _ => {
                return Err(DefinitionError::new(
                    &value_field,
                    "operator date_between needs [\"YYYY-MM-DD\", \"YYYY-MM-DD\"]",
                ))
            }
        },
        Operator::IsTrue => Test::IsBool(true),
        Operator::IsFalse => Test::IsBool(false),
        Operator::VersionEquals
        | Operator::VersionGreaterThan
        | Operator::VersionGreaterThanOrEqual
        | Operator::VersionLessThan
        | Operator::VersionLessThanOrEqual => {
            let text = string_value()?;
            let version = parse_version(&text).ok_or_else(|| {
                DefinitionError::new(
                    &value_field,
                    format!("\"{text}\" is not a version like 16.4.1"),
                )
            })?;
            let (ord, or_equal) = match cond.op {
                Operator::VersionEquals => (Equal, true),
                Operator::VersionGreaterThan => (Greater, false),
                Operator::VersionGreaterThanOrEqual => (Greater, true),
                Operator::VersionLessThan => (Less, false),
                _ => (Less, true),
            };
            Test::VersionCmp(ord, or_equal, version)
        }
    };
    Ok(CompiledCondition { name, test })
}

pub(super) fn op_name(op: Operator) -> String {
    serde_json::to_value(op)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
