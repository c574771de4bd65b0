//! Operator-written health rules ([`HealthRule`]): CEL expressions over the workload, compiled
//! once and judged on every evaluation. Pure: no I/O.
//!
//! Compiling checks what a CEL parser alone does not: only `object` (and the variables of the
//! rule's own comprehensions) may be named, only functions the evaluator has, a result of the
//! wrong type where the expression's shape tells it (`healthy: "'yes'"`), and bounds on size
//! and comprehension nesting. Evaluation is bounded too: before a rule runs, its cost on the
//! object at hand (expression nodes × the longest list in the object to the power of the
//! comprehension nesting) must stay within [`MAX_COST`]; a rule that would exceed it, or fails
//! while it runs, makes the workload unknown with the reason, never a panic.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use cel::common::ast::{Expr, IdedExpr, LiteralValue, operators};
use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value};

use super::WorkloadHealth;
use crate::api::{HealthRule, HealthRuleSpec, MAX_EXPRESSION_LENGTH};

/// Most nodes one expression may have after its macros are expanded.
pub const MAX_NODES: usize = 400;
/// Most comprehensions (`all`, `exists`, `map`, …) nested in one another.
pub const MAX_NESTING: u32 = 2;
/// Most work one evaluation may take: nodes × (longest list + 1) ^ nesting.
pub const MAX_COST: u64 = 2_000_000;
/// Longest message kept in a diagnosis.
const MAX_MESSAGE_CHARS: usize = 256;

/// The variable every expression reads: the workload.
pub const OBJECT: &str = "object";

/// The standard environment, built once.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// Global functions the evaluator provides (member functions such as `startsWith` are
/// resolved on their receiver at run time).
const GLOBAL_FUNCTIONS: [&str; 12] = [
    "size",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "type",
    "dyn",
    "timestamp",
    "duration",
    "matches",
];

/// Member functions the evaluator provides (`receiver.f(...)`); the comprehension macros
/// (`all`, `exists`, `exists_one`, `map`, `filter`) and `has` are expanded before this check.
const MEMBER_FUNCTIONS: [&str; 19] = [
    "contains",
    "endsWith",
    "startsWith",
    "matches",
    "size",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getFullYear",
    "getHours",
    "getMilliseconds",
    "getMinutes",
    "getMonth",
    "getSeconds",
    "hasValue",
    "value",
    "or",
    "orValue",
];

/// Names an expression may use as types, e.g. `type(x) == string`.
const TYPE_NAMES: [&str; 11] = [
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
];

/// Which expression of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Healthy,
    Unknown,
    Message,
}

impl Field {
    pub fn path(self) -> &'static str {
        match self {
            Field::Healthy => "spec.healthy",
            Field::Unknown => "spec.unknown",
            Field::Message => "spec.message",
        }
    }

    fn wants(self) -> Kind {
        match self {
            Field::Healthy | Field::Unknown => Kind::Bool,
            Field::Message => Kind::String,
        }
    }
}

/// Why an expression does not compile: the field, where (1-based line and column, when the
/// parser or checker knows), and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct CompileError {
    pub field: Field,
    pub position: Option<(u32, u32)>,
    pub reason: String,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(
                f,
                "{}: line {line}, column {column}: {}",
                self.field.path(),
                self.reason
            ),
            None => write!(f, "{}: {}", self.field.path(), self.reason),
        }
    }
}

/// One compiled expression and what bounds its cost.
#[derive(Debug)]
struct Compiled {
    program: Program,
    nodes: usize,
    nesting: u32,
    /// How many times longer than the object's longest list a list the expression iterates
    /// may be: each `+` may join two lists.
    growth: u64,
}

/// A HealthRule ready to judge objects.
#[derive(Debug)]
pub struct CompiledRule {
    /// The HealthRule's name, shown in diagnoses.
    pub name: String,
    healthy: Compiled,
    unknown: Option<Compiled>,
    message: Option<Compiled>,
}

impl CompiledRule {
    /// Compiles every expression of `spec`; the first error found, by field.
    pub fn compile(name: &str, spec: &HealthRuleSpec) -> Result<Self, CompileError> {
        Ok(Self {
            name: name.to_string(),
            healthy: compile(Field::Healthy, &spec.healthy)?,
            unknown: spec
                .unknown
                .as_deref()
                .map(|source| compile(Field::Unknown, source))
                .transpose()?,
            message: spec
                .message
                .as_deref()
                .map(|source| compile(Field::Message, source))
                .transpose()?,
        })
    }

    /// Compiles a stored HealthRule.
    pub fn of(rule: &HealthRule) -> Result<Self, CompileError> {
        Self::compile(
            rule.metadata.name.as_deref().unwrap_or_default(),
            &rule.spec,
        )
    }

    /// The verdict on `object` (the workload as JSON). `replaces` names the built-in rule this
    /// one is used in place of, said in the diagnosis.
    pub fn judge(&self, object: &serde_json::Value, replaces: Option<&str>) -> WorkloadHealth {
        let label = match replaces {
            Some(builtin) => format!(
                "rule {} (in place of the built-in {builtin} rule)",
                self.name
            ),
            None => format!("rule {}", self.name),
        };
        let (value, longest_list) = to_cel(object);
        let budget = |compiled: &Compiled| cost(compiled, longest_list) <= MAX_COST;
        let all = [
            Some(&self.healthy),
            self.unknown.as_ref(),
            self.message.as_ref(),
        ];
        if !all.into_iter().flatten().all(budget) {
            return WorkloadHealth::unknown(format!(
                "{label}: not evaluated, too costly for this object (its longest list has \
                 {longest_list} items; the bound is {MAX_COST})"
            ));
        }
        let mut context = Context::with_env(ENV.clone());
        context.add_variable_from_value(OBJECT, value);
        let unknown = match &self.unknown {
            Some(compiled) => match run_bool(compiled, &context) {
                Ok(unknown) => unknown,
                Err(error) => {
                    return WorkloadHealth::unknown(format!("{label}: unknown failed: {error}"));
                }
            },
            None => false,
        };
        let (health, decided_by) = if unknown {
            (crate::api::Health::Unknown, "unknown is true")
        } else {
            match run_bool(&self.healthy, &context) {
                Ok(true) => (crate::api::Health::Healthy, "healthy is true"),
                Ok(false) => (crate::api::Health::Unhealthy, "healthy is false"),
                Err(error) => {
                    return WorkloadHealth::unknown(format!("{label}: healthy failed: {error}"));
                }
            }
        };
        let message = match &self.message {
            Some(compiled) => match compiled.program.execute(&context) {
                Ok(Value::String(text)) => bounded(&text),
                Ok(other) => format!(
                    "{decided_by} (message gave {}, not a string)",
                    value_kind(&other)
                ),
                Err(error) => format!("{decided_by} (message failed: {error})"),
            },
            None => decided_by.to_string(),
        };
        WorkloadHealth {
            health,
            diagnosis: format!("{label}: {message}"),
            workload_status: None,
        }
    }
}

/// The rules in force, by target apiVersion and kind. When several rules name one kind, the
/// first by name is used.
#[derive(Debug, Default)]
pub struct RuleSet {
    by_target: HashMap<(String, String), Arc<CompiledRule>>,
}

impl RuleSet {
    /// The rules in force among `rules` (those that compile), each with its target.
    pub fn new<'a>(
        rules: impl IntoIterator<Item = (&'a crate::api::RuleTarget, Arc<CompiledRule>)>,
    ) -> Self {
        let mut by_target: HashMap<(String, String), Arc<CompiledRule>> = HashMap::new();
        for (target, rule) in rules {
            let key = (target.api_version.clone(), target.kind.clone());
            match by_target.get(&key) {
                Some(kept) if kept.name <= rule.name => {}
                _ => {
                    by_target.insert(key, rule);
                }
            }
        }
        Self { by_target }
    }

    /// The rule for workloads of `api_version` and `kind`.
    pub fn for_kind(&self, api_version: &str, kind: &str) -> Option<&Arc<CompiledRule>> {
        self.by_target
            .get(&(api_version.to_string(), kind.to_string()))
    }

    /// Whether a rule names this group and kind (in any version).
    pub fn names(&self, group: &str, kind: &str) -> bool {
        self.by_target
            .keys()
            .any(|(api_version, k)| k == kind && crate::api::group_of(api_version) == group)
    }

    pub fn is_empty(&self) -> bool {
        self.by_target.is_empty()
    }
}

fn compile(field: Field, source: &str) -> Result<Compiled, CompileError> {
    let error = |position, reason: String| CompileError {
        field,
        position,
        reason,
    };
    if source.trim().is_empty() {
        return Err(error(None, "is empty".to_string()));
    }
    if source.len() > MAX_EXPRESSION_LENGTH {
        return Err(error(
            None,
            format!(
                "is {} bytes long; at most {MAX_EXPRESSION_LENGTH}",
                source.len()
            ),
        ));
    }
    let program = ENV.compile(source).map_err(|errors| {
        let first = errors.errors.first();
        let position = first.and_then(|e| {
            let (line, column) = e.pos;
            Some((u32::try_from(line).ok()?, u32::try_from(column).ok()?))
        });
        let reason = first.map_or_else(|| errors.to_string(), |e| readable(&e.msg));
        error(position, reason)
    })?;
    let position_of = |id: u64| line_column(source, &program, id);
    let mut check = Check::default();
    check.walk(program.expression(), &mut vec![]);
    if let Some((id, reason)) = check.problem {
        return Err(error(position_of(id), reason));
    }
    if check.nodes > MAX_NODES {
        return Err(error(
            None,
            format!(
                "has {} nodes once expanded; at most {MAX_NODES}",
                check.nodes
            ),
        ));
    }
    if check.deepest > MAX_NESTING {
        return Err(error(
            None,
            format!(
                "nests {} comprehensions (all, exists, map, …); at most {MAX_NESTING}",
                check.deepest
            ),
        ));
    }
    let kind = kind_of(program.expression());
    if kind != Kind::Dyn && kind != field.wants() {
        return Err(error(
            position_of(program.expression().id),
            format!(
                "gives {}; {} must give {}",
                kind.name(),
                field.path(),
                field.wants().name()
            ),
        ));
    }
    Ok(Compiled {
        program,
        nodes: check.nodes,
        nesting: check.deepest,
        growth: check.adds + 1,
    })
}

/// The parser's message, without the debug form it gives some errors.
fn readable(message: &str) -> String {
    if message.contains("Recursion limit") {
        return "nested too deeply for the parser (at most 96 levels)".to_string();
    }
    message.to_string()
}

/// The 1-based line and column of node `id` in `source`.
fn line_column(source: &str, program: &Program, id: u64) -> Option<(u32, u32)> {
    let (start, _) = program.source_info().offset_for(id)?;
    let before = source.get(..start as usize)?;
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((u32::try_from(line).ok()?, u32::try_from(column).ok()?))
}

/// Walks an expression: counts nodes, measures comprehension nesting, and finds the first
/// name or function the evaluator would not know.
#[derive(Default)]
struct Check {
    nodes: usize,
    deepest: u32,
    /// Calls of `+`, which may join lists.
    adds: u64,
    problem: Option<(u64, String)>,
}

impl Check {
    fn walk(&mut self, node: &IdedExpr, bound: &mut Vec<String>) {
        self.walk_at(node, bound, 0);
    }

    fn walk_at(&mut self, node: &IdedExpr, bound: &mut Vec<String>, depth: u32) {
        if self.problem.is_some() {
            return;
        }
        self.nodes += 1;
        self.deepest = self.deepest.max(depth);
        match &node.expr {
            Expr::Ident(name) => {
                let known = name == OBJECT
                    || bound.iter().any(|b| b == name)
                    || TYPE_NAMES.contains(&name.as_str());
                if !known {
                    self.problem = Some((
                        node.id,
                        format!("undeclared reference to '{name}' (the workload is `object`)"),
                    ));
                }
            }
            Expr::Call(call) => {
                if call.func_name == operators::ADD {
                    self.adds += 1;
                }
                let is_operator = call.func_name.starts_with('_')
                    || call.func_name.starts_with('@')
                    || call.func_name.starts_with('!')
                    || call.func_name.starts_with('-');
                if call.target.is_some() && !MEMBER_FUNCTIONS.contains(&call.func_name.as_str()) {
                    self.problem = Some((
                        node.id,
                        format!(
                            "undeclared function '{}' (functions called on a value: {})",
                            call.func_name,
                            MEMBER_FUNCTIONS.join(", ")
                        ),
                    ));
                    return;
                }
                if call.target.is_none()
                    && !is_operator
                    && !GLOBAL_FUNCTIONS.contains(&call.func_name.as_str())
                {
                    self.problem =
                        Some((node.id, format!("undeclared function '{}'", call.func_name)));
                    return;
                }
                if let Some(target) = &call.target {
                    self.walk_at(target, bound, depth);
                }
                for arg in &call.args {
                    self.walk_at(arg, bound, depth);
                }
            }
            Expr::Comprehension(c) => {
                self.walk_at(&c.iter_range, bound, depth);
                self.walk_at(&c.accu_init, bound, depth);
                let before = bound.len();
                bound.push(c.iter_var.clone());
                bound.extend(c.iter_var2.clone());
                bound.push(c.accu_var.clone());
                self.walk_at(&c.loop_cond, bound, depth + 1);
                self.walk_at(&c.loop_step, bound, depth + 1);
                self.walk_at(&c.result, bound, depth + 1);
                bound.truncate(before);
            }
            Expr::List(list) => {
                for element in &list.elements {
                    self.walk_at(element, bound, depth);
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(e) = &entry.expr {
                        self.walk_at(&e.key, bound, depth);
                        self.walk_at(&e.value, bound, depth);
                    }
                }
            }
            Expr::Select(select) => self.walk_at(&select.operand, bound, depth),
            Expr::Struct(_) => {
                self.problem = Some((
                    node.id,
                    "message literals are not supported; build a map instead".to_string(),
                ));
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
}

/// What an expression gives, where its shape tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bool,
    String,
    Number,
    Null,
    List,
    Map,
    Bytes,
    Time,
    /// Decided by the data at run time (a field, an index, …).
    Dyn,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Bool => "a bool",
            Kind::String => "a string",
            Kind::Number => "a number",
            Kind::Null => "null",
            Kind::List => "a list",
            Kind::Map => "a map",
            Kind::Bytes => "bytes",
            Kind::Time => "a timestamp or duration",
            Kind::Dyn => "a value of any type",
        }
    }
}

fn kind_of(node: &IdedExpr) -> Kind {
    match &node.expr {
        Expr::Literal(literal) => match literal {
            LiteralValue::Boolean(_) => Kind::Bool,
            LiteralValue::String(_) => Kind::String,
            LiteralValue::Int(_) | LiteralValue::UInt(_) | LiteralValue::Double(_) => Kind::Number,
            LiteralValue::Bytes(_) => Kind::Bytes,
            LiteralValue::Null => Kind::Null,
        },
        Expr::List(_) => Kind::List,
        Expr::Map(_) => Kind::Map,
        Expr::Select(select) if select.test => Kind::Bool,
        Expr::Comprehension(c) => match &c.result.expr {
            Expr::Ident(name) if *name == c.accu_var => kind_of(&c.accu_init),
            _ => kind_of(&c.result),
        },
        Expr::Call(call) => match call.func_name.as_str() {
            operators::LOGICAL_AND
            | operators::LOGICAL_OR
            | operators::LOGICAL_NOT
            | operators::NOT_STRICTLY_FALSE
            | operators::EQUALS
            | operators::NOT_EQUALS
            | operators::LESS
            | operators::LESS_EQUALS
            | operators::GREATER
            | operators::GREATER_EQUALS
            | operators::IN
            | "matches"
            | "startsWith"
            | "endsWith"
            | "contains"
            | "bool" => Kind::Bool,
            "string" => Kind::String,
            "size"
            | "int"
            | "uint"
            | "double"
            | operators::SUBSTRACT
            | operators::MULTIPLY
            | operators::DIVIDE
            | operators::MODULO
            | operators::NEGATE => Kind::Number,
            "timestamp" | "duration" => Kind::Time,
            operators::ADD => match (kind_of(&call.args[0]), call.args.get(1).map(kind_of)) {
                (Kind::String, _) | (_, Some(Kind::String)) => Kind::String,
                (Kind::List, _) | (_, Some(Kind::List)) => Kind::List,
                (Kind::Number, Some(Kind::Number)) => Kind::Number,
                _ => Kind::Dyn,
            },
            operators::CONDITIONAL => match (call.args.get(1), call.args.get(2)) {
                (Some(then), Some(otherwise)) if kind_of(then) == kind_of(otherwise) => {
                    kind_of(then)
                }
                _ => Kind::Dyn,
            },
            _ => Kind::Dyn,
        },
        Expr::Select(_) | Expr::Ident(_) | Expr::Struct(_) | Expr::Unspecified => Kind::Dyn,
    }
}

fn cost(compiled: &Compiled, longest_list: usize) -> u64 {
    let per_level = (longest_list as u64)
        .saturating_mul(compiled.growth)
        .saturating_add(1);
    let loops = per_level.saturating_pow(compiled.nesting);
    (compiled.nodes as u64).saturating_mul(loops)
}

fn run_bool(compiled: &Compiled, context: &Context) -> Result<bool, String> {
    match compiled.program.execute(context) {
        Ok(Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("gave {}, not a bool", value_kind(&other))),
        Err(error) => Err(error.to_string()),
    }
}

fn value_kind(value: &Value) -> String {
    value.type_of().to_string()
}

fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// The object as a CEL value, and the length of its longest list (what bounds the cost of
/// comprehensions). Integers stay integers; numbers beyond i64 become uint, fractions double.
pub fn to_cel(json: &serde_json::Value) -> (Value, usize) {
    let mut longest = 0;
    let value = convert(json, &mut longest);
    (value, longest)
}

fn convert(json: &serde_json::Value, longest: &mut usize) -> Value {
    use serde_json::Value as J;
    match json {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            (None, Some(u), _) => Value::UInt(u),
            (None, None, Some(f)) => Value::Float(f),
            _ => Value::Null,
        },
        J::String(s) => Value::String(Arc::new(s.clone())),
        J::Array(items) => {
            *longest = (*longest).max(items.len());
            Value::List(Arc::new(
                items.iter().map(|i| convert(i, longest)).collect(),
            ))
        }
        J::Object(fields) => {
            let map: HashMap<Key, Value> = fields
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), convert(v, longest)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Health, RuleTarget};
    use serde_json::json;

    fn spec(healthy: &str) -> HealthRuleSpec {
        HealthRuleSpec {
            target: RuleTarget {
                api_version: "db.example.com/v1".into(),
                kind: "Claim".into(),
            },
            healthy: healthy.into(),
            unknown: None,
            message: None,
        }
    }

    fn claim(ready: i64, wanted: i64) -> serde_json::Value {
        json!({"apiVersion": "db.example.com/v1", "kind": "Claim",
               "metadata": {"name": "db", "namespace": "ns"},
               "spec": {"instances": wanted}, "status": {"readyInstances": ready}})
    }

    #[test]
    fn a_rule_judges_healthy_and_unhealthy() {
        let mut s = spec("object.status.readyInstances == object.spec.instances");
        s.message = Some("'ready ' + string(object.status.readyInstances)".into());
        let rule = CompiledRule::compile("claims", &s).unwrap();
        let healthy = rule.judge(&claim(2, 2), None);
        assert_eq!(healthy.health, Health::Healthy);
        assert_eq!(healthy.diagnosis, "rule claims: ready 2");
        let unhealthy = rule.judge(&claim(1, 2), None);
        assert_eq!(unhealthy.health, Health::Unhealthy);
        assert_eq!(unhealthy.diagnosis, "rule claims: ready 1");
    }

    #[test]
    fn unknown_is_checked_before_healthy() {
        let mut s = spec("object.status.readyInstances == object.spec.instances");
        s.unknown = Some("!has(object.status)".into());
        let rule = CompiledRule::compile("claims", &s).unwrap();
        let no_status = json!({"spec": {"instances": 1}});
        let verdict = rule.judge(&no_status, None);
        assert_eq!(verdict.health, Health::Unknown);
        assert_eq!(verdict.diagnosis, "rule claims: unknown is true");
    }

    #[test]
    fn a_run_time_failure_is_unknown_with_the_error() {
        let rule =
            CompiledRule::compile("claims", &spec("object.status.readyInstances > 0")).unwrap();
        let verdict = rule.judge(&json!({"spec": {}}), Some("Deployment"));
        assert_eq!(verdict.health, Health::Unknown);
        assert_eq!(
            verdict.diagnosis,
            "rule claims (in place of the built-in Deployment rule): healthy failed: No such key: status"
        );
        let not_bool = CompiledRule::compile("claims", &spec("object.spec")).unwrap();
        let verdict = not_bool.judge(&json!({"spec": {}}), None);
        assert_eq!(verdict.health, Health::Unknown);
        assert_eq!(
            verdict.diagnosis,
            "rule claims: healthy failed: gave map, not a bool"
        );
    }

    #[test]
    fn syntax_errors_name_the_field_and_position() {
        let error = CompiledRule::compile("r", &spec("object.status.ready ==")).unwrap_err();
        assert_eq!(error.field, Field::Healthy);
        assert_eq!(error.position, Some((1, 23)));
        assert!(
            error
                .to_string()
                .starts_with("spec.healthy: line 1, column 23: Syntax error"),
            "{error}"
        );
    }

    #[test]
    fn wrong_result_types_are_refused_when_the_shape_tells() {
        let error = CompiledRule::compile("r", &spec("'yes'")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "spec.healthy: line 1, column 1: gives a string; spec.healthy must give a bool"
        );
        let mut s = spec("true");
        s.message = Some("object.status.readyInstances > 1".into());
        let error = CompiledRule::compile("r", &s).unwrap_err();
        assert_eq!(error.field, Field::Message);
        assert!(
            error
                .to_string()
                .contains("gives a bool; spec.message must give a string")
        );
        for fine in [
            "object.status.ready",
            "has(object.status) && object.status.ready",
            "object.status.conditions.exists(c, c.type == 'Ready' && c.status == 'True')",
            "size(object.spec.items) > 0 ? true : false",
        ] {
            CompiledRule::compile("r", &spec(fine)).unwrap();
        }
    }

    #[test]
    fn unknown_names_and_functions_are_refused() {
        let error = CompiledRule::compile("r", &spec("self.status.ready")).unwrap_err();
        assert_eq!(error.position, Some((1, 1)));
        assert!(
            error.reason.contains("undeclared reference to 'self'"),
            "{error}"
        );
        let error = CompiledRule::compile("r", &spec("now() > 1")).unwrap_err();
        assert!(
            error.reason.contains("undeclared function 'now'"),
            "{error}"
        );
        CompiledRule::compile("r", &spec("object.spec.items.all(i, i.ok)")).unwrap();
    }

    #[test]
    fn every_listed_global_function_exists() {
        for function in GLOBAL_FUNCTIONS {
            let program = ENV.compile(&format!("{function}(1)")).unwrap();
            let result = program.execute(&Context::with_env(ENV.clone()));
            assert!(
                !matches!(result, Err(cel::ExecutionError::UndeclaredReference(_))),
                "{function}: {result:?}"
            );
        }
    }

    #[test]
    fn every_listed_member_function_exists_and_others_are_refused() {
        for function in MEMBER_FUNCTIONS {
            let program = ENV.compile(&format!("'x'.{function}()")).unwrap();
            let result = program.execute(&Context::with_env(ENV.clone()));
            assert!(
                !matches!(result, Err(cel::ExecutionError::UndeclaredReference(_))),
                "{function}: {result:?}"
            );
        }
        let error =
            CompiledRule::compile("r", &spec("object.metadata.name.startWith('a')")).unwrap_err();
        assert!(
            error.reason.contains("undeclared function 'startWith'"),
            "{error}"
        );
        let error = CompiledRule::compile("r", &spec("object.metadata.name.lowerAscii() == 'a'"))
            .unwrap_err();
        assert!(error.reason.contains("'lowerAscii'"), "{error}");
    }

    #[test]
    fn size_and_nesting_are_bounded() {
        let deep = "object.a.all(x, object.b.all(y, object.c.all(z, true)))";
        let error = CompiledRule::compile("r", &spec(deep)).unwrap_err();
        assert!(error.reason.contains("nests 3 comprehensions"), "{error}");
        let long = vec!["object.a == 1"; 200].join(" || ");
        assert!(CompiledRule::compile("r", &spec(&long)).is_err());
    }

    #[test]
    fn costly_objects_are_not_evaluated() {
        let rule = CompiledRule::compile(
            "r",
            &spec("object.items.all(x, object.items.all(y, x == y))"),
        )
        .unwrap();
        let items: Vec<i64> = (0..2_000).collect();
        let verdict = rule.judge(&json!({"items": items}), None);
        assert_eq!(verdict.health, Health::Unknown);
        assert!(
            verdict.diagnosis.contains("too costly"),
            "{}",
            verdict.diagnosis
        );
        let small = rule.judge(&json!({"items": [1, 1]}), None);
        assert_eq!(small.health, Health::Healthy);
    }

    #[test]
    fn lists_joined_by_the_expression_count_in_the_cost() {
        let joined = vec!["object.a"; 60].join(" + ");
        let source = format!("({joined}).all(x, ({joined}).all(y, x == y))");
        let rule = CompiledRule::compile("r", &spec(&source)).unwrap();
        let items: Vec<i64> = (0..69).collect();
        let verdict = rule.judge(&json!({"a": items}), None);
        assert_eq!(verdict.health, Health::Unknown);
        assert!(
            verdict.diagnosis.contains("too costly"),
            "{}",
            verdict.diagnosis
        );
    }

    #[test]
    fn deep_nesting_is_refused_in_words() {
        let deep = format!("{}true{}", "(".repeat(120), ")".repeat(120));
        let error = CompiledRule::compile("r", &spec(&deep)).unwrap_err();
        assert!(error.reason.contains("nested too deeply"), "{error}");
        assert!(!error.reason.contains("ParseError"), "{error}");
    }

    #[test]
    fn large_numbers_and_fractions_convert() {
        let rule = CompiledRule::compile("r", &spec("object.big > 0u && object.f < 1.0")).unwrap();
        let verdict = rule.judge(&json!({"big": u64::MAX, "f": 0.5}), None);
        assert_eq!(verdict.health, Health::Healthy, "{}", verdict.diagnosis);
    }

    #[test]
    fn the_first_rule_by_name_wins_a_kind() {
        let target = RuleTarget {
            api_version: "db.example.com/v1".into(),
            kind: "Claim".into(),
        };
        let a = Arc::new(CompiledRule::compile("a", &spec("true")).unwrap());
        let b = Arc::new(CompiledRule::compile("b", &spec("false")).unwrap());
        let set = RuleSet::new([(&target, b), (&target, a)]);
        assert_eq!(
            set.for_kind("db.example.com/v1", "Claim").unwrap().name,
            "a"
        );
        assert!(set.names("db.example.com", "Claim"));
        assert!(!set.names("db.example.com", "Other"));
        assert!(set.for_kind("db.example.com/v2", "Claim").is_none());
    }
}
