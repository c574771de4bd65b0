//! The HealthRule examples of docs/health-rules.md ("Rules of your own: HealthRule"), read from
//! the document itself: an example's first YAML block is its HealthRule, its second the sample
//! objects, and its table the verdict on each sample. The samples are judged the way the
//! controller judges workloads (`evaluate` with the rules in force), so the document cannot
//! drift from what the rules do. The bounds and diagnoses the section quotes are checked too.

use std::sync::Arc;

use kube::ResourceExt;
use kube::core::DynamicObject;
use serde_json::{Value, json};

use super::evaluate;
use super::rules::{CompiledRule, MAX_COST, MAX_NESTING, MAX_NODES, RuleSet};
use super::testing::Objects;
use crate::api::{
    HealthRule, HealthRuleSpec, HealthStatus, MAX_EXPRESSION_LENGTH, RuleTarget, WorkloadReference,
};

const DOC: &str = include_str!("../../docs/health-rules.md");
const SECTION: &str = "## Rules of your own: HealthRule";
const NAMESPACE: &str = "shop";

/// The lines of the HealthRule section, up to the next `## ` heading.
fn section() -> Vec<&'static str> {
    let lines: Vec<&str> = DOC
        .lines()
        .skip_while(|l| l.trim() != SECTION)
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .collect();
    assert!(!lines.is_empty(), "docs/health-rules.md has no {SECTION:?}");
    lines
}

/// The `### ` subsections of the HealthRule section: heading and lines.
fn subsections() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in section() {
        if let Some(heading) = line.strip_prefix("### ") {
            out.push((heading.trim(), Vec::new()));
        } else if let Some((_, lines)) = out.last_mut() {
            lines.push(line);
        }
    }
    out
}

fn subsection(heading: &str) -> Vec<&'static str> {
    subsections()
        .into_iter()
        .find(|(h, _)| *h == heading)
        .map(|(_, lines)| lines)
        .unwrap_or_else(|| panic!("no \"### {heading}\" in the HealthRule section"))
}

/// The fenced ```yaml blocks among `lines`.
fn yaml_blocks(lines: &[&str]) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in lines {
        match current.as_mut() {
            None if line.trim() == "```yaml" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    assert!(current.is_none(), "a ```yaml block is not closed");
    blocks
}

/// One row of an example's verdict table.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Verdict {
    sample: String,
    health: String,
    diagnosis: String,
}

/// The rows of the first table among `lines`, backticks around the cells removed.
fn table(lines: &[&str]) -> Vec<Verdict> {
    lines
        .iter()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| {
            let cells: Vec<&str> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`'))
                .collect();
            assert_eq!(cells.len(), 3, "a verdict row has three cells: {l}");
            Verdict {
                sample: cells[0].to_string(),
                health: cells[1].to_string(),
                diagnosis: cells[2].to_string(),
            }
        })
        .collect()
}

/// An example as the document writes it.
struct Example {
    heading: &'static str,
    rule: HealthRule,
    samples: Vec<DynamicObject>,
    verdicts: Vec<Verdict>,
}

fn examples() -> Vec<Example> {
    let examples: Vec<Example> = subsections()
        .into_iter()
        .filter(|(heading, _)| heading.starts_with("Example:"))
        .map(|(heading, lines)| {
            let blocks = yaml_blocks(&lines);
            assert_eq!(
                blocks.len(),
                2,
                "{heading}: two yaml blocks, the HealthRule and the samples"
            );
            let rule: HealthRule = serde_saphyr::from_str(&blocks[0])
                .unwrap_or_else(|e| panic!("{heading}: the HealthRule does not parse: {e}"));
            let samples = serde_saphyr::from_multiple::<Value>(&blocks[1])
                .unwrap_or_else(|e| panic!("{heading}: the samples do not parse: {e}"))
                .into_iter()
                .map(|value| {
                    let mut object: DynamicObject = serde_json::from_value(value)
                        .unwrap_or_else(|e| panic!("{heading}: a sample is no object: {e}"));
                    // As the watch of a kind without a built-in cache keeps it.
                    object.managed_fields_mut().clear();
                    object
                })
                .collect();
            Example {
                heading,
                rule,
                samples,
                verdicts: table(&lines),
            }
        })
        .collect();
    assert_eq!(
        examples.len(),
        3,
        "the HealthRule section has three examples"
    );
    examples
}

/// A cluster holding every example's samples, with every example's rule in force: what
/// `health::evaluate` reads through the controller's caches. A kind without a built-in cache
/// is served in any version, as the API server serves an object in each version of its kind.
struct Cluster(Objects);

impl Cluster {
    fn of(examples: &[Example]) -> Self {
        let compiled: Vec<(&RuleTarget, Arc<CompiledRule>)> = examples
            .iter()
            .map(|e| {
                let rule = CompiledRule::of(&e.rule)
                    .unwrap_or_else(|error| panic!("{}: does not compile: {error}", e.heading));
                (&e.rule.spec.target, Arc::new(rule))
            })
            .collect();
        let mut objects = Objects {
            rules: RuleSet::new(compiled),
            ..Objects::default()
        };
        for sample in examples.iter().flat_map(|e| &e.samples) {
            objects.add_dynamic(sample.clone());
        }
        Self(objects)
    }

    fn judge(&self, reference: &WorkloadReference) -> (String, String) {
        let condition = evaluate(NAMESPACE, reference, &self.0);
        let health = match condition.health_status {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::Unknown => "unknown",
        };
        (health.to_string(), condition.diagnosis)
    }
}

/// A scope's reference to a sample, by the sample's own apiVersion and kind.
fn reference_to(object: &DynamicObject) -> WorkloadReference {
    let types = object
        .types
        .clone()
        .expect("a sample has apiVersion and kind");
    WorkloadReference::new(types.api_version, types.kind, object.name_any())
}

/// A verdict table as the document writes it.
fn markdown(rows: &[Verdict]) -> String {
    let mut out = String::from("| sample | health | diagnosis |\n|---|---|---|\n");
    for row in rows {
        out.push_str(&format!(
            "| `{}` | {} | `{}` |\n",
            row.sample, row.health, row.diagnosis
        ));
    }
    out
}

#[test]
fn every_example_judges_its_samples_as_its_table_says() {
    let examples = examples();
    let cluster = Cluster::of(&examples);
    let mut differing = String::new();
    for example in &examples {
        let target = &example.rule.spec.target;
        let judged: Vec<Verdict> = example
            .samples
            .iter()
            .map(|sample| {
                let reference = reference_to(sample);
                assert_eq!(
                    (&reference.api_version, &reference.kind),
                    (&target.api_version, &target.kind),
                    "{}: sample {} is not of the rule's target",
                    example.heading,
                    reference.name
                );
                let (health, diagnosis) = cluster.judge(&reference);
                Verdict {
                    sample: reference.name,
                    health,
                    diagnosis,
                }
            })
            .collect();
        if judged != example.verdicts {
            differing.push_str(&format!(
                "### {}\n\n{}\n",
                example.heading,
                markdown(&judged)
            ));
        }
    }
    assert!(
        differing.is_empty(),
        "docs/health-rules.md's HealthRule examples differ from the verdicts; the samples are \
         judged:\n\n{differing}"
    );
}

#[test]
fn each_example_covers_every_health() {
    for example in examples() {
        let mut seen: Vec<&str> = example.verdicts.iter().map(|v| v.health.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(
            seen,
            ["healthy", "unhealthy", "unknown"],
            "{}: samples for each health",
            example.heading
        );
    }
}

#[test]
fn a_rule_judges_only_its_exact_api_version() {
    let examples = examples();
    let cluster = Cluster::of(&examples);
    for example in &examples {
        let sample = &example.samples[0];
        let exact = reference_to(sample);
        let (_, diagnosis) = cluster.judge(&exact);
        assert!(diagnosis.starts_with("rule "), "{diagnosis}");
        let other_version = WorkloadReference::new(
            format!("{}/v0alpha1", exact.group()),
            exact.kind.clone(),
            exact.name.clone(),
        );
        let (_, diagnosis) = cluster.judge(&other_version);
        assert!(
            !diagnosis.starts_with("rule "),
            "{}: another version keeps the built-in judgement: {diagnosis}",
            example.heading
        );
        // Its kind may still be watched in any version of its group.
        assert!(cluster.0.rules.names(exact.group(), &exact.kind));
    }
}

#[test]
fn the_chart_values_in_the_document_compile_and_match_the_example() {
    let lines = subsection("Shipping rules with the chart");
    let blocks = yaml_blocks(&lines);
    assert_eq!(blocks.len(), 1, "one values.yaml block");
    let values: Value = serde_saphyr::from_str(&blocks[0]).unwrap();
    let shipped = values["healthRules"].as_array().expect("healthRules");
    assert!(!shipped.is_empty());
    let examples = examples();
    for entry in shipped {
        let name = entry["name"].as_str().expect("a name");
        let mut spec = entry.clone();
        spec.as_object_mut().unwrap().remove("name");
        let spec: HealthRuleSpec = serde_json::from_value(spec).unwrap();
        CompiledRule::compile(name, &spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        let example = examples
            .iter()
            .find(|e| e.rule.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name} is no example's rule"));
        assert_eq!(spec, example.rule.spec, "{name}: as in its example");
        let granted = values["rbac"]["extraRules"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|rule| {
                rule["apiGroups"]
                    .as_array()
                    .is_some_and(|g| g.iter().any(|g| g == spec.target.group()))
                    && rule["verbs"].as_array().is_some_and(|v| {
                        v.iter().any(|v| v == "list") && v.iter().any(|v| v == "watch")
                    })
            });
        assert!(granted, "{name}: list and watch granted on its kind");
    }
}

/// The document with every run of whitespace made one space (a code span may wrap).
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn spec(healthy: &str, unknown: Option<&str>, message: Option<&str>) -> HealthRuleSpec {
    HealthRuleSpec {
        target: RuleTarget {
            api_version: "database.example.com/v1".into(),
            kind: "PostgresClaim".into(),
        },
        healthy: healthy.into(),
        unknown: unknown.map(Into::into),
        message: message.map(Into::into),
    }
}

#[test]
fn the_diagnoses_the_section_quotes_are_what_rules_say() {
    let doc = flat(&section().join("\n"));
    let quoted = |text: &str| {
        assert!(
            doc.contains(&format!("`{text}`")),
            "the HealthRule section does not quote `{text}`"
        );
    };
    let object = json!({"spec": {"instances": 1, "conditions": []}});
    // Each case: the expressions, the diagnosis, and the part of it the section quotes.
    let cases = [
        (
            "true",
            Some("object.spec.instances == 1"),
            None,
            "rule NAME: unknown is true",
            None,
        ),
        ("true", None, None, "rule NAME: healthy is true", None),
        ("false", None, None, "rule NAME: healthy is false", None),
        (
            "object.status.ready",
            None,
            None,
            "rule NAME: healthy failed: No such key: status",
            None,
        ),
        (
            "true",
            Some("object.spec"),
            None,
            "rule NAME: unknown failed: gave map, not a bool",
            None,
        ),
        (
            "true",
            None,
            Some("object.spec.conditions.map(c, c.reason)[0]"),
            "rule NAME: healthy is true (message failed: Index out of bounds: Int(0))",
            None,
        ),
        (
            "false",
            None,
            Some("object.spec.instances"),
            "rule NAME: healthy is false (message gave int, not a string)",
            None,
        ),
    ];
    let misspelt = CompiledRule::compile("NAME", &spec("'abc'.startWith('a')", None, None))
        .expect_err("a misspelt member function is refused");
    assert!(
        misspelt
            .reason
            .starts_with("undeclared function 'startWith' (functions called on a value: ")
    );
    quoted("undeclared function 'startWith' (functions called on a value: …)");
    for (healthy, unknown, message, want, quote) in cases {
        let rule = CompiledRule::compile("NAME", &spec(healthy, unknown, message)).unwrap();
        let diagnosis = rule.judge(&object, None).diagnosis;
        assert_eq!(diagnosis, want, "{healthy} / {unknown:?} / {message:?}");
        quoted(quote.unwrap_or(want));
    }
    let rule = CompiledRule::compile("NAME", &spec("true", None, None)).unwrap();
    let diagnosis = rule.judge(&object, Some("Deployment")).diagnosis;
    assert!(diagnosis.starts_with("rule NAME (in place of the built-in Deployment rule): "));
    quoted("rule NAME (in place of the built-in Deployment rule): MESSAGE");

    let nested = "object.items.all(x, object.items.all(y, x == y))";
    let rule = CompiledRule::compile("NAME", &spec(nested, None, None)).unwrap();
    let items: Vec<i64> = (0..5_000).collect();
    let diagnosis = rule.judge(&json!({"items": items}), None).diagnosis;
    quoted(&diagnosis.replace("5000", "N"));

    for (healthy, want) in [
        (
            "'yes'",
            "spec.healthy: line 1, column 1: gives a string; spec.healthy must give a bool",
        ),
        (
            "self.status.ready",
            "spec.healthy: line 1, column 1: undeclared reference to 'self' (the workload is `object`)",
        ),
    ] {
        let error = CompiledRule::compile("NAME", &spec(healthy, None, None)).unwrap_err();
        assert_eq!(error.to_string(), want);
        assert!(doc.contains(want), "the section does not quote {want:?}");
    }
    let error = CompiledRule::compile("NAME", &spec("now() > 0", None, None)).unwrap_err();
    assert!(
        error.reason.contains("undeclared function 'now'"),
        "{error}"
    );
}

#[test]
fn the_bounds_the_section_states_are_the_constants() {
    let doc = flat(&section().join("\n"));
    let thousands = |n: u64| {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    for stated in [
        format!("at most {MAX_NODES} nodes per expression"),
        format!("nested at most {MAX_NESTING} deep"),
        format!("must stay within {} (`MAX_COST`)", thousands(MAX_COST)),
        format!("the bound is {MAX_COST})"),
        format!("An expression is at most {MAX_EXPRESSION_LENGTH} bytes"),
    ] {
        assert!(doc.contains(&stated), "the section does not say {stated:?}");
    }
    // The worked numbers: a 100-node expression, lists of up to 19,999 items under one level
    // of comprehension and 140 under two.
    assert!(doc.contains("lists have up to 19,999 items; with two levels, up to 140"));
    let cost = |longest: u64, nesting: u32| 100 * (longest + 1).pow(nesting);
    assert!(cost(19_999, 1) <= MAX_COST && cost(20_000, 1) > MAX_COST);
    assert!(cost(140, 2) <= MAX_COST && cost(141, 2) > MAX_COST);

    // Messages are cut at 256 characters.
    assert!(doc.contains("cut at 256 characters (ending `…`)"));
    let long = format!("'{}'", "x".repeat(300));
    let rule = CompiledRule::compile("r", &spec("true", None, Some(&long))).unwrap();
    let diagnosis = rule.judge(&json!({}), None).diagnosis;
    assert_eq!(diagnosis, format!("rule r: {}…", "x".repeat(256)));
}
