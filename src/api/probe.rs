//! A HealthScope's probe settings: the one set of rules the webhook validates with and the
//! controller probes by (defaults applied):
//!
//! - `probe-method`: one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, in upper case as HTTP
//!   spells them. Absent: GET.
//! - `probe-endpoint`: an absolute path, optionally with a query — never a scheme, host or port,
//!   so a scope cannot make the controller call an address of its choosing. It starts with a
//!   single `/` (`//host` would name a host), has at most 1024 characters, only the characters
//!   RFC 3986 allows in a path and query (no whitespace, control characters, `\` or `#`), `%`
//!   only as a `%XX` escape, and no `.` or `..` segment (clients would rewrite them).
//!   Absent: no HTTP probe.
//! - `probe-timeout`: 1 to 300 seconds. `probe-interval`: 2 to 3600 seconds. The timeout may
//!   not exceed the interval, so one probe round ends by the time the next one is due (the OAM
//!   spec's own example sets both to 5).
//! - Defaults, as in the OAM runtime: 10 s each. An absent interval is 10 s, or the timeout
//!   when that is longer; an absent timeout is 10 s, or the interval when that is shorter.

use std::time::Duration;

use super::{
    DEFAULT_PROBE_INTERVAL_SECONDS, DEFAULT_PROBE_METHOD, DEFAULT_PROBE_TIMEOUT_SECONDS,
    HealthScopeSpec,
};

/// HTTP methods a probe may use.
pub const PROBE_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/// Longest `probe-endpoint`.
pub const MAX_ENDPOINT_LEN: usize = 1024;
pub const MIN_TIMEOUT_SECONDS: i32 = 1;
pub const MAX_TIMEOUT_SECONDS: i32 = 300;
pub const MIN_INTERVAL_SECONDS: i32 = 2;
pub const MAX_INTERVAL_SECONDS: i32 = 3600;

/// How a scope is probed, after defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSettings {
    pub method: String,
    /// The path (and query) to probe; `None`: no HTTP probe.
    pub endpoint: Option<String>,
    pub timeout: Duration,
    pub interval: Duration,
}

/// The probe settings of a valid spec, or every reason it is invalid (field name first).
impl HealthScopeSpec {
    /// The probe settings of a valid spec, or every reason it is invalid (field name first).
    pub fn probe_settings(&self) -> Result<ProbeSettings, Vec<String>> {
        probe_settings(self)
    }

    /// The settings the controller probes with (see [`effective_probe_settings`]).
    pub fn effective_probe_settings(&self) -> ProbeSettings {
        effective_probe_settings(self)
    }

    /// The probe fields (what validation looks at).
    pub fn probe_fields(&self) -> impl PartialEq + use<'_> {
        (
            &self.probe_method,
            &self.probe_endpoint,
            self.probe_timeout,
            self.probe_interval,
        )
    }
}

/// The probe settings of a valid spec, or every reason it is invalid (field name first).
fn probe_settings(spec: &HealthScopeSpec) -> Result<ProbeSettings, Vec<String>> {
    let mut problems = Vec::new();
    let method = check_method(spec.probe_method.as_deref()).unwrap_or_else(|p| {
        problems.push(p);
        DEFAULT_PROBE_METHOD.to_string()
    });
    let endpoint = check_endpoint(spec.probe_endpoint.as_deref()).unwrap_or_else(|p| {
        problems.push(p);
        None
    });
    let (timeout, interval) =
        check_timing(spec.probe_timeout, spec.probe_interval).unwrap_or_else(|p| {
            problems.extend(p);
            default_timing()
        });
    if problems.is_empty() {
        Ok(ProbeSettings {
            method,
            endpoint,
            timeout: seconds(timeout),
            interval: seconds(interval),
        })
    } else {
        Err(problems)
    }
}

/// The settings the controller probes with: [`probe_settings`] when the spec is valid; for a
/// scope that slipped past validation (created before the webhook), each invalid part falls
/// back to its default and an invalid endpoint means no HTTP probe.
fn effective_probe_settings(spec: &HealthScopeSpec) -> ProbeSettings {
    let method = check_method(spec.probe_method.as_deref())
        .unwrap_or_else(|_| DEFAULT_PROBE_METHOD.to_string());
    let endpoint = check_endpoint(spec.probe_endpoint.as_deref()).unwrap_or(None);
    let (timeout, interval) =
        check_timing(spec.probe_timeout, spec.probe_interval).unwrap_or_else(|_| default_timing());
    ProbeSettings {
        method,
        endpoint,
        timeout: seconds(timeout),
        interval: seconds(interval),
    }
}

fn seconds(n: i32) -> Duration {
    Duration::from_secs(u64::try_from(n).unwrap_or(1))
}

fn default_timing() -> (i32, i32) {
    // Both absent always passes the checks.
    (
        DEFAULT_PROBE_TIMEOUT_SECONDS.min(DEFAULT_PROBE_INTERVAL_SECONDS),
        DEFAULT_PROBE_INTERVAL_SECONDS,
    )
}

fn check_method(method: Option<&str>) -> Result<String, String> {
    match method {
        None => Ok(DEFAULT_PROBE_METHOD.to_string()),
        Some(m) if PROBE_METHODS.contains(&m) => Ok(m.to_string()),
        Some(m) if PROBE_METHODS.contains(&m.to_ascii_uppercase().as_str()) => Err(format!(
            "probe-method {m:?} must be written in upper case: {}",
            m.to_ascii_uppercase()
        )),
        Some(m) => Err(format!(
            "probe-method {m:?} is not one of {}",
            PROBE_METHODS.join(", ")
        )),
    }
}

fn check_endpoint(endpoint: Option<&str>) -> Result<Option<String>, String> {
    let Some(path) = endpoint else {
        return Ok(None);
    };
    let shown = || {
        let short: String = path.chars().take(80).collect();
        format!("probe-endpoint {short:?}")
    };
    if path.len() > MAX_ENDPOINT_LEN {
        return Err(format!(
            "{} is longer than {MAX_ENDPOINT_LEN} characters",
            shown()
        ));
    }
    if !path.starts_with('/') {
        let hint = if path.contains("://") {
            "; give only the path, the controller probes each endpoint of the scope's Services"
        } else {
            ""
        };
        return Err(format!(
            "{} must be a path starting with '/'{hint}",
            shown()
        ));
    }
    if path.starts_with("//") {
        return Err(format!(
            "{} must not start with '//', which names a host",
            shown()
        ));
    }
    if let Some(bad) = path.chars().find(|c| !is_path_char(*c)) {
        return Err(format!(
            "{} contains {bad:?}, which is not allowed in a path",
            shown()
        ));
    }
    let bytes = path.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Err(format!(
                "{} has a '%' that is not followed by two hex digits",
                shown()
            ));
        }
    }
    let path_part = path.split('?').next().unwrap_or_default();
    if path_part.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("{} must not contain '.' or '..' segments", shown()));
    }
    Ok(Some(path.to_string()))
}

/// RFC 3986 `pchar`, `/` and `?` (path and query), plus `%` checked separately.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '-' | '.'
                | '_'
                | '~'
                | '!'
                | '$'
                | '&'
                | '\''
                | '('
                | ')'
                | '*'
                | '+'
                | ','
                | ';'
                | '='
                | ':'
                | '@'
                | '/'
                | '?'
                | '%'
        )
}

fn check_timing(timeout: Option<i32>, interval: Option<i32>) -> Result<(i32, i32), Vec<String>> {
    let mut problems = Vec::new();
    if let Some(t) = timeout
        && !(MIN_TIMEOUT_SECONDS..=MAX_TIMEOUT_SECONDS).contains(&t)
    {
        problems.push(format!(
            "probe-timeout {t} must be between {MIN_TIMEOUT_SECONDS} and {MAX_TIMEOUT_SECONDS} seconds"
        ));
    }
    if let Some(i) = interval
        && !(MIN_INTERVAL_SECONDS..=MAX_INTERVAL_SECONDS).contains(&i)
    {
        problems.push(format!(
            "probe-interval {i} must be between {MIN_INTERVAL_SECONDS} and {MAX_INTERVAL_SECONDS} seconds"
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let (timeout, interval) = match (timeout, interval) {
        (Some(t), Some(i)) => (t, i),
        (Some(t), None) => (t, DEFAULT_PROBE_INTERVAL_SECONDS.max(t)),
        (None, Some(i)) => (DEFAULT_PROBE_TIMEOUT_SECONDS.min(i), i),
        (None, None) => default_timing(),
    };
    if timeout > interval {
        return Err(vec![format!(
            "probe-timeout {timeout} must not exceed probe-interval {interval}"
        )]);
    }
    Ok((timeout, interval))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn spec(fields: Value) -> HealthScopeSpec {
        serde_json::from_value(fields).unwrap()
    }

    fn problems(fields: Value) -> Vec<String> {
        probe_settings(&spec(fields)).unwrap_err()
    }

    #[test]
    fn defaults_are_the_oam_runtimes_and_never_exceed_the_interval() {
        let s = probe_settings(&spec(json!({}))).unwrap();
        assert_eq!(s.method, "GET");
        assert_eq!(s.endpoint, None);
        assert_eq!((s.timeout.as_secs(), s.interval.as_secs()), (10, 10));
        let s = probe_settings(&spec(json!({"probe-interval": 5}))).unwrap();
        assert_eq!((s.timeout.as_secs(), s.interval.as_secs()), (5, 5));
        let s = probe_settings(&spec(json!({"probe-interval": 60}))).unwrap();
        assert_eq!((s.timeout.as_secs(), s.interval.as_secs()), (10, 60));
        let s = probe_settings(&spec(json!({"probe-timeout": 60}))).unwrap();
        assert_eq!((s.timeout.as_secs(), s.interval.as_secs()), (60, 60));
        let s = probe_settings(&spec(json!({"probe-timeout": 3}))).unwrap();
        assert_eq!((s.timeout.as_secs(), s.interval.as_secs()), (3, 10));
    }

    #[test]
    fn timing_out_of_bounds_or_above_the_interval_is_rejected() {
        assert!(problems(json!({"probe-timeout": 0}))[0].contains("probe-timeout 0"));
        assert!(problems(json!({"probe-timeout": -5}))[0].contains("between 1 and 300"));
        assert!(problems(json!({"probe-timeout": 301}))[0].contains("probe-timeout 301"));
        assert!(problems(json!({"probe-interval": 1}))[0].contains("probe-interval 1"));
        assert!(problems(json!({"probe-interval": 3601}))[0].contains("3600"));
        let p = problems(json!({"probe-timeout": 11, "probe-interval": 10}));
        assert_eq!(p, ["probe-timeout 11 must not exceed probe-interval 10"]);
        // The OAM spec's own example.
        assert!(probe_settings(&spec(json!({"probe-timeout": 5, "probe-interval": 5}))).is_ok());
    }

    #[test]
    fn method_must_be_an_http_method_in_upper_case() {
        for m in PROBE_METHODS {
            let s = probe_settings(&spec(json!({"probe-method": m}))).unwrap();
            assert_eq!(s.method, m);
        }
        assert!(problems(json!({"probe-method": "get"}))[0].contains("upper case: GET"));
        assert!(problems(json!({"probe-method": "CONNECT"}))[0].contains("not one of"));
        assert!(problems(json!({"probe-method": ""}))[0].contains("not one of"));
    }

    #[test]
    fn endpoint_must_be_a_path_and_nothing_else() {
        for good in [
            "/",
            "/health",
            "/healthz?verbose=1",
            "/a/b-c_d~e/%20x",
            "/v1/status:check",
        ] {
            let s = probe_settings(&spec(json!({"probe-endpoint": good}))).unwrap();
            assert_eq!(s.endpoint.as_deref(), Some(good));
        }
        let cases = [
            ("health", "starting with '/'"),
            ("http://evil.example/health", "give only the path"),
            ("//evil.example/health", "names a host"),
            ("/health check", "' '"),
            ("/health\n", "'\\n'"),
            ("/a#frag", "'#'"),
            ("/a\\b", "'\\\\'"),
            ("/a/%zz", "two hex digits"),
            ("/a/../admin", "'..' segments"),
            ("/a/./b", "'..' segments"),
            ("/ä", "'ä'"),
        ];
        for (bad, why) in cases {
            let p = problems(json!({"probe-endpoint": bad}));
            assert!(p[0].contains(why), "{bad:?}: {p:?}");
            assert!(p[0].starts_with("probe-endpoint "), "{p:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_ENDPOINT_LEN));
        assert!(problems(json!({"probe-endpoint": long}))[0].contains("longer than 1024"));
    }

    #[test]
    fn every_problem_is_reported_and_effective_settings_fall_back() {
        let bad = spec(
            json!({"probe-method": "FETCH", "probe-endpoint": "http://x/",
                              "probe-timeout": 0}),
        );
        assert_eq!(probe_settings(&bad).unwrap_err().len(), 3);
        let effective = effective_probe_settings(&bad);
        assert_eq!(
            effective,
            ProbeSettings {
                method: "GET".into(),
                endpoint: None,
                timeout: Duration::from_secs(10),
                interval: Duration::from_secs(10),
            }
        );
        let good = spec(json!({"probe-endpoint": "/h", "probe-interval": 30}));
        assert_eq!(
            effective_probe_settings(&good),
            probe_settings(&good).unwrap()
        );
    }
}
