//! Comparing values in canonical form, so that one thing written two ways is never a
//! diff: `amd64` and `x86_64`, `nvidia-tesla-a100` and `A100`, an empty list and no
//! list, `4` and `4.0`.
//!
//! Terraform lets a plan keep the prior value of an attribute instead of the
//! configured one when both are set (the provider then says they mean the same), and
//! lets an Optional+Computed attribute that the configuration leaves out take any
//! value. [`planned`] uses exactly those two freedoms; [`refreshed`] keeps the state's
//! spelling when what the service returns means the same.

use crate::number::Number;
use computearbitrage_api::pb;
use tf_provider::value::Value;

pub type StringList = Value<Vec<Value<String>>>;

/// The value to plan for an attribute.
///
/// - `default`: `None` for an Optional attribute (left out, it is null); for an
///   Optional+Computed one, the canonical value that leaving it out means.
/// - `canon`: the attribute's canonical form.
pub fn planned<T: Clone, C: PartialEq>(
    config: &Value<T>,
    prior: &Value<T>,
    default: Option<Value<T>>,
    canon: impl Fn(&Value<T>) -> C,
) -> Value<T> {
    let target = match (config, default) {
        (Value::Unknown, _) => return Value::Unknown,
        (Value::Null, None) => return Value::Null,
        (Value::Null, Some(default)) => default,
        (value, _) => value.clone(),
    };
    if target.is_unknown() || prior.is_unknown() {
        return target;
    }
    let keep_prior = canon(&target) == canon(prior) && (prior.is_value() || config.is_null());
    if keep_prior {
        prior.clone()
    } else {
        target
    }
}

/// The value to store after a refresh: `actual` from the service, in `prior`'s form
/// when they mean the same.
pub fn refreshed<T: Clone, C: PartialEq>(
    prior: &Value<T>,
    actual: &Value<T>,
    canon: impl Fn(&Value<T>) -> C,
) -> Value<T> {
    if !prior.is_unknown() && canon(prior) == canon(actual) {
        prior.clone()
    } else {
        actual.clone()
    }
}

/// A list of strings: null and empty are the same.
pub fn list(value: &StringList) -> Vec<String> {
    crate::requirements::strings(value)
}

/// A list for a state: the elements, or an empty list.
pub fn list_value(items: &[String]) -> StringList {
    Value::Value(items.iter().cloned().map(Value::Value).collect())
}

/// A map of strings: null and empty are the same.
pub fn map(
    value: &Value<std::collections::BTreeMap<String, Value<String>>>,
) -> std::collections::BTreeMap<String, String> {
    value
        .as_ref_option()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_ref_option().map(|v| (k.clone(), v.clone())))
                .collect()
        })
        .unwrap_or_default()
}

/// Address ranges compare as a set of canonical ranges: `10.0.0.1/32` is `10.0.0.1`,
/// order and repeats do not matter, and an empty list is this machine only. Null is
/// itself, so a new workload's plan (and the first refresh of a state written before
/// the attribute existed) shows the ranges the service uses.
pub fn cidrs(value: &StringList) -> Option<Vec<String>> {
    if value.is_null() {
        return None;
    }
    let mut ranges: Vec<String> = list(value)
        .iter()
        .map(|c| computearbitrage_api::canonical_cidr(c))
        .collect();
    if ranges.is_empty() {
        ranges = default_tcp_allowed();
    }
    ranges.sort();
    ranges.dedup();
    Some(ranges)
}

/// Who may reach a TCP endpoint when the configuration does not say.
pub fn default_tcp_allowed() -> Vec<String> {
    computearbitrage_api::DEFAULT_TCP_ALLOWED
        .iter()
        .map(|c| c.to_string())
        .collect()
}

pub fn number(value: &Value<Number>) -> Option<u64> {
    value.as_ref_option().map(|n| n.value().to_bits())
}

pub fn flag(value: &Value<bool>) -> Option<bool> {
    value.as_ref_option().copied()
}

pub fn text(value: &Value<String>) -> Option<String> {
    value.as_ref_option().cloned()
}

/// Architectures compare by their canonical name; unknown names as written.
pub fn architecture(value: &Value<String>) -> Option<String> {
    value.as_ref_option().map(|a| {
        computearbitrage_api::canonical_architecture(a)
            .map(str::to_string)
            .unwrap_or_else(|| a.clone())
    })
}

/// GPU models compare by their canonical name.
pub fn gpu(value: &Value<String>) -> Option<String> {
    value
        .as_ref_option()
        .map(|g| computearbitrage_api::canonical_gpu(g))
}

/// The canonical form of requirements, as the service stores them.
pub fn requirements(r: &pb::Requirements) -> pb::Requirements {
    pb::Requirements {
        architecture: computearbitrage_api::canonical_architecture(&r.architecture)
            .map(str::to_string)
            .unwrap_or_else(|| r.architecture.clone()),
        gpu_name: if r.gpu_name.trim().is_empty() {
            String::new()
        } else {
            computearbitrage_api::canonical_gpu(&r.gpu_name)
        },
        allow_unknown_interruption_rate: Some(r.allow_unknown_interruption_rate.unwrap_or(false)),
        ..r.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value<String> {
        Value::Value(v.into())
    }

    #[test]
    fn a_configured_spelling_that_means_the_prior_value_plans_the_prior() {
        assert_eq!(
            planned(&s("amd64"), &s("x86_64"), None, architecture),
            s("x86_64")
        );
        assert_eq!(
            planned(&s("arm64"), &s("x86_64"), None, architecture),
            s("arm64")
        );
        assert_eq!(planned(&s("a100"), &s("A100"), None, gpu), s("A100"));
        // Terraform allows the prior only when it is set.
        assert_eq!(
            planned(&s("amd64"), &Value::Null, None, architecture),
            s("amd64")
        );
        assert_eq!(
            planned::<String, _>(&Value::Null, &s("x86_64"), None, architecture),
            Value::Null
        );
        assert!(planned(&Value::Unknown, &s("x86_64"), None, architecture).is_unknown());
    }

    #[test]
    fn an_unset_optional_computed_attribute_plans_its_canonical_value() {
        let empty = || Some(list_value(&[]));
        // Left out, with a prior empty list or none: no diff either way.
        assert_eq!(
            planned(&Value::Null, &list_value(&[]), empty(), list),
            list_value(&[])
        );
        assert_eq!(
            planned(&Value::Null, &Value::Null, empty(), list),
            Value::Null
        );
        // Removed from the configuration: the canonical empty list, a real diff.
        assert_eq!(
            planned(&Value::Null, &list_value(&["aws".into()]), empty(), list),
            list_value(&[])
        );
        // Written as [] against a prior empty list: the prior.
        assert_eq!(
            planned(&list_value(&[]), &list_value(&[]), empty(), list),
            list_value(&[])
        );
        let no = || Some(Value::Value(false));
        assert_eq!(
            planned(&Value::Null, &Value::Value(true), no(), flag),
            Value::Value(false)
        );
        assert_eq!(
            planned(&Value::Value(false), &Value::Value(false), no(), flag),
            Value::Value(false)
        );
    }

    #[test]
    fn a_refresh_keeps_the_state_spelling_unless_the_meaning_changed() {
        assert_eq!(
            refreshed(&s("amd64"), &s("x86_64"), architecture),
            s("amd64")
        );
        assert_eq!(
            refreshed(&s("amd64"), &s("arm64"), architecture),
            s("arm64")
        );
        assert_eq!(refreshed(&Value::Null, &list_value(&[]), list), Value::Null);
    }

    #[test]
    fn requirements_compare_in_canonical_form() {
        let written = pb::Requirements {
            architecture: "AMD64".into(),
            gpu_name: "nvidia-tesla-a100".into(),
            ..Default::default()
        };
        let stored = pb::Requirements {
            architecture: "x86_64".into(),
            gpu_name: "A100".into(),
            allow_unknown_interruption_rate: Some(false),
            ..Default::default()
        };
        assert_eq!(requirements(&written), requirements(&stored));
    }
}
