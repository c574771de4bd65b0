//! Arbitrary JSON as the workload operators' HealthRules judge, and arbitrary text as a rule's
//! expressions. Judging never panics and always says which rule decided; compiling any text
//! never panics, and whatever compiles can be judged. (Not named health_rules: that target is
//! the built-in rules'.)
#![no_main]

use std::sync::LazyLock;

use healthscope::api::{HealthRuleSpec, RuleTarget};
use healthscope::health::CompiledRule;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// A few rules in the shapes operators write: field tests, comprehensions (nested too),
/// optionals, conversions, timestamps and durations, regular expressions, arithmetic.
const RULES: &[(&str, Option<&str>, &str, Option<&str>)] = &[
    (
        "claims",
        Some("!has(object.status) || !has(object.status.readyInstances)"),
        "object.status.readyInstances == object.spec.instances",
        Some(
            "has(object.status) && has(object.status.readyInstances) \
             ? string(object.status.readyInstances) + '/' + string(object.spec.instances) \
             : 'no readyInstances reported yet'",
        ),
    ),
    (
        "ready-condition",
        Some(
            "!has(object.status) || !has(object.status.conditions) || \
             !object.status.conditions.exists(c, c.type == 'Ready' && c.status in ['True', 'False'])",
        ),
        "(!has(object.status.observedGeneration) || \
         object.status.observedGeneration >= object.metadata.generation) && \
         object.status.conditions.exists(c, c.type == 'Ready' && c.status == 'True')",
        Some(
            "!has(object.status) || !has(object.status.conditions) || \
             !object.status.conditions.exists(c, c.type == 'Ready') ? 'no Ready condition yet' \
             : object.status.conditions.filter(c, c.type == 'Ready').map(c, \
             'Ready=' + c.status + (has(c.reason) ? ': ' + c.reason : '') + \
             (has(c.message) ? ': ' + c.message : ''))[0]",
        ),
    ),
    (
        "last-run",
        Some("!has(object.status) || !has(object.status.lastScheduleTime)"),
        "has(object.status.lastSuccessfulTime) && \
         timestamp(object.status.lastSuccessfulTime) >= timestamp(object.status.lastScheduleTime)",
        Some(
            "'scheduled ' + string(object.status.lastScheduleTime) + ', ' + \
             string(timestamp(object.status.lastSuccessfulTime) - \
             timestamp(object.status.lastScheduleTime))",
        ),
    ),
    (
        "nested",
        None,
        "object.spec.items.all(i, object.status.items.exists(j, j.name == i.name && j.ready))",
        Some(
            "string(size(object.status.items.filter(j, j.ready))) + ' of ' + \
             string(size(object.spec.items)) + ' ready'",
        ),
    ),
    (
        "optionals",
        Some("object.?status.?phase.orValue('') == ''"),
        "object.?status.?replicas.orValue(0) > 0 && \
         object.status.phase.matches(object.?spec.?pattern.orValue('^Run'))",
        Some("'phase ' + object.?status.?phase.orValue('none')"),
    ),
    (
        "arithmetic",
        None,
        "object.spec.items.map(x, x * 2 + 1).all(y, y / object.spec.divisor > 0) && \
         double(object.spec.ratio) < 1.5 && int(object.spec.count) - 1 >= 0",
        Some("string(object.spec.items.map(x, type(x) == int ? x % 7 : 0))"),
    ),
    (
        "labels",
        Some("!has(object.metadata.labels)"),
        "object.metadata.labels.exists(k, k.startsWith('app.') && \
         object.metadata.labels[k].endsWith('-ok')) || \
         size(object.metadata.labels) > 3 && duration(object.spec.timeout) < duration('1h')",
        Some("object.metadata.labels.map(k, k).filter(k, k.contains('/'))[0]"),
    ),
];

fn spec(healthy: &str, unknown: Option<&str>, message: Option<&str>) -> HealthRuleSpec {
    HealthRuleSpec {
        target: RuleTarget {
            api_version: "fuzz.example.com/v1".into(),
            kind: "Widget".into(),
        },
        healthy: healthy.into(),
        unknown: unknown.map(Into::into),
        message: message.map(Into::into),
    }
}

static COMPILED: LazyLock<Vec<CompiledRule>> = LazyLock::new(|| {
    RULES
        .iter()
        .map(|(name, unknown, healthy, message)| {
            CompiledRule::compile(name, &spec(healthy, *unknown, *message))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        })
        .collect()
});

/// An object every compiled expression of the input is judged on, besides the input itself.
static SAMPLE: LazyLock<Value> = LazyLock::new(|| {
    json!({
        "apiVersion": "fuzz.example.com/v1", "kind": "Widget",
        "metadata": {"name": "w", "namespace": "ns", "generation": 2,
                     "labels": {"app.oam.dev/name": "shop"}},
        "spec": {"instances": 3, "items": [1, 2, 3], "ratio": 0.5, "timeout": "90s"},
        "status": {"observedGeneration": 2, "readyInstances": 3,
                   "lastScheduleTime": "2026-12-01T02:00:00Z",
                   "conditions": [{"type": "Ready", "status": "True", "reason": "Up"}]}
    })
});

fn check(rule: &CompiledRule, object: &Value) {
    for replaces in [None, Some("Deployment")] {
        let verdict = rule.judge(object, replaces);
        let label = match replaces {
            Some(builtin) => format!(
                "rule {} (in place of the built-in {builtin} rule): ",
                rule.name
            ),
            None => format!("rule {}: ", rule.name),
        };
        assert!(
            verdict.diagnosis.starts_with(&label),
            "{:?} does not say which rule decided",
            verdict.diagnosis
        );
        assert!(verdict.workload_status.is_none());
    }
}

fuzz_target!(|data: &[u8]| {
    // The input as the workload.
    if let Ok(object) = serde_json::from_slice::<Value>(data) {
        for rule in COMPILED.iter() {
            check(rule, &object);
        }
    }
    // The input as each expression of a rule: compiling never panics; what compiles is judged.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let fields = [
        spec(text, None, None),
        spec("true", Some(text), None),
        spec("false", None, Some(text)),
    ];
    for spec in &fields {
        if let Ok(rule) = CompiledRule::compile("fuzz", spec) {
            check(&rule, &SAMPLE);
        }
    }
});
