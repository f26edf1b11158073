//! The KFP v2beta1 routes Gantry serves, and the matcher that finds one for a request. The
//! authorization layer and the handlers use the same matcher, so a route cannot be served
//! without its entry in the authorization table (`crate::auth::TABLE`, keyed by
//! `"METHOD pattern"`).
//!
//! KFP puts a verb after the last path parameter inside one segment
//! (`/runs/{run_id}:terminate`), which common routers do not match; this one does.

use std::collections::BTreeMap;

/// Every KFP endpoint Gantry answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Healthz,
    ListExperiments,
    CreateExperiment,
    GetExperiment,
    DeleteExperiment,
    ArchiveExperiment,
    UnarchiveExperiment,
    ListPipelines,
    UploadPipeline,
    UploadPipelineVersion,
    GetPipeline,
    DeletePipeline,
    ListPipelineVersions,
    GetPipelineVersion,
    DeletePipelineVersion,
    ListRuns,
    CreateRun,
    GetRun,
    DeleteRun,
    TerminateRun,
    RetryRun,
    ArchiveRun,
    UnarchiveRun,
    ListRecurringRuns,
    CreateRecurringRun,
    GetRecurringRun,
    DeleteRecurringRun,
    EnableRecurringRun,
    DisableRecurringRun,
}

impl Endpoint {
    /// Whether it changes the state: then it runs on the leader.
    pub fn writes(self) -> bool {
        use Endpoint::*;
        !matches!(
            self,
            Healthz
                | ListExperiments
                | GetExperiment
                | ListPipelines
                | GetPipeline
                | ListPipelineVersions
                | GetPipelineVersion
                | ListRuns
                | GetRun
                | ListRecurringRuns
                | GetRecurringRun
        )
    }
}

#[derive(Debug)]
pub struct Route {
    pub method: &'static str,
    pub pattern: &'static str,
    pub endpoint: Endpoint,
}

const fn route(method: &'static str, pattern: &'static str, endpoint: Endpoint) -> Route {
    Route {
        method,
        pattern,
        endpoint,
    }
}

/// Statics come before parameters where both could match (`/pipelines/upload`).
pub const ROUTES: &[Route] = &[
    route("GET", "/apis/v2beta1/healthz", Endpoint::Healthz),
    route(
        "GET",
        "/apis/v2beta1/experiments",
        Endpoint::ListExperiments,
    ),
    route(
        "POST",
        "/apis/v2beta1/experiments",
        Endpoint::CreateExperiment,
    ),
    route(
        "GET",
        "/apis/v2beta1/experiments/{experiment_id}",
        Endpoint::GetExperiment,
    ),
    route(
        "DELETE",
        "/apis/v2beta1/experiments/{experiment_id}",
        Endpoint::DeleteExperiment,
    ),
    route(
        "POST",
        "/apis/v2beta1/experiments/{experiment_id}:archive",
        Endpoint::ArchiveExperiment,
    ),
    route(
        "POST",
        "/apis/v2beta1/experiments/{experiment_id}:unarchive",
        Endpoint::UnarchiveExperiment,
    ),
    route("GET", "/apis/v2beta1/pipelines", Endpoint::ListPipelines),
    route(
        "POST",
        "/apis/v2beta1/pipelines/upload",
        Endpoint::UploadPipeline,
    ),
    route(
        "POST",
        "/apis/v2beta1/pipelines/upload_version",
        Endpoint::UploadPipelineVersion,
    ),
    route(
        "GET",
        "/apis/v2beta1/pipelines/{pipeline_id}",
        Endpoint::GetPipeline,
    ),
    route(
        "DELETE",
        "/apis/v2beta1/pipelines/{pipeline_id}",
        Endpoint::DeletePipeline,
    ),
    route(
        "GET",
        "/apis/v2beta1/pipelines/{pipeline_id}/versions",
        Endpoint::ListPipelineVersions,
    ),
    route(
        "GET",
        "/apis/v2beta1/pipelines/{pipeline_id}/versions/{pipeline_version_id}",
        Endpoint::GetPipelineVersion,
    ),
    route(
        "DELETE",
        "/apis/v2beta1/pipelines/{pipeline_id}/versions/{pipeline_version_id}",
        Endpoint::DeletePipelineVersion,
    ),
    route("GET", "/apis/v2beta1/runs", Endpoint::ListRuns),
    route("POST", "/apis/v2beta1/runs", Endpoint::CreateRun),
    route("GET", "/apis/v2beta1/runs/{run_id}", Endpoint::GetRun),
    route("DELETE", "/apis/v2beta1/runs/{run_id}", Endpoint::DeleteRun),
    route(
        "POST",
        "/apis/v2beta1/runs/{run_id}:terminate",
        Endpoint::TerminateRun,
    ),
    route(
        "POST",
        "/apis/v2beta1/runs/{run_id}:retry",
        Endpoint::RetryRun,
    ),
    route(
        "POST",
        "/apis/v2beta1/runs/{run_id}:archive",
        Endpoint::ArchiveRun,
    ),
    route(
        "POST",
        "/apis/v2beta1/runs/{run_id}:unarchive",
        Endpoint::UnarchiveRun,
    ),
    route(
        "GET",
        "/apis/v2beta1/recurringruns",
        Endpoint::ListRecurringRuns,
    ),
    route(
        "POST",
        "/apis/v2beta1/recurringruns",
        Endpoint::CreateRecurringRun,
    ),
    route(
        "GET",
        "/apis/v2beta1/recurringruns/{recurring_run_id}",
        Endpoint::GetRecurringRun,
    ),
    route(
        "DELETE",
        "/apis/v2beta1/recurringruns/{recurring_run_id}",
        Endpoint::DeleteRecurringRun,
    ),
    route(
        "POST",
        "/apis/v2beta1/recurringruns/{recurring_run_id}:enable",
        Endpoint::EnableRecurringRun,
    ),
    route(
        "POST",
        "/apis/v2beta1/recurringruns/{recurring_run_id}:disable",
        Endpoint::DisableRecurringRun,
    ),
];

/// Where KFP HTTP paths begin.
pub const PREFIX: &str = "/apis/";

/// The authorization table's key for a route.
pub fn key(r: &Route) -> String {
    format!("{} {}", r.method, r.pattern)
}

/// What a request path matched.
#[derive(Debug)]
pub enum Found {
    Route {
        route: &'static Route,
        params: BTreeMap<String, String>,
    },
    /// The path exists for other methods (for a 405 that names them).
    WrongMethod(Vec<&'static str>),
    /// Part of KFP's API that Gantry does not serve (yet): 501, not 404.
    NotImplemented,
    NotFound,
}

/// KFP endpoints outside [`ROUTES`], answered 501 with what to use instead.
const UNIMPLEMENTED: &[&str] = &[
    "/apis/v2beta1/pipelines/create",
    "/apis/v2beta1/pipelines/names/",
    "/apis/v2beta1/artifacts",
    "/apis/v2beta1/visualizations",
    "/apis/v1beta1/",
];

/// The route for `method` and `path` (not yet percent-decoded).
pub fn find(method: &str, path: &str) -> Found {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut methods = Vec::new();
    for r in ROUTES {
        let Some(params) = match_pattern(r.pattern, &segments) else {
            continue;
        };
        if r.method == method {
            return Found::Route { route: r, params };
        }
        methods.push(r.method);
    }
    if !methods.is_empty() {
        return Found::WrongMethod(methods);
    }
    let base = path.trim_end_matches('/');
    let unimplemented = UNIMPLEMENTED.iter().any(|u| {
        base == u.trim_end_matches('/')
            || base.starts_with(&format!("{}/", u.trim_end_matches('/')))
            || base.starts_with(&format!("{}:", u.trim_end_matches('/')))
    });
    if unimplemented || (path == "/apis/v2beta1/pipelines" && method == "POST") {
        Found::NotImplemented
    } else {
        Found::NotFound
    }
}

fn match_pattern(pattern: &'static str, segments: &[&str]) -> Option<BTreeMap<String, String>> {
    let want: Vec<&str> = pattern.split('/').collect();
    if want.len() != segments.len() {
        return None;
    }
    let mut params = BTreeMap::new();
    for (w, got) in want.iter().zip(segments) {
        let Some(inner) = w.strip_prefix('{') else {
            if w != got {
                return None;
            }
            continue;
        };
        let (name, verb) = match inner.split_once('}') {
            Some((name, rest)) => (name, rest),
            None => return None,
        };
        let value = if verb.is_empty() {
            *got
        } else {
            got.strip_suffix(verb)?
        };
        let value = percent_decode(value)?;
        if value.is_empty() || value.contains(':') || value.contains('/') {
            return None;
        }
        params.insert(name.to_string(), value);
    }
    Some(params)
}

/// Percent-decodes a path segment; `None` if it is not valid UTF-8 after decoding.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            let b = u8::from_str_radix(hex, 16).ok()?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(method: &str, path: &str) -> Option<(Endpoint, BTreeMap<String, String>)> {
        match find(method, path) {
            Found::Route { route, params } => Some((route.endpoint, params)),
            _ => None,
        }
    }

    #[test]
    fn verbs_after_a_parameter_and_statics_before_parameters() {
        let (e, p) = endpoint("POST", "/apis/v2beta1/runs/r-1:terminate").unwrap();
        assert_eq!(e, Endpoint::TerminateRun);
        assert_eq!(p["run_id"], "r-1");
        assert_eq!(
            endpoint("POST", "/apis/v2beta1/pipelines/upload")
                .unwrap()
                .0,
            Endpoint::UploadPipeline
        );
        let (e, p) = endpoint("GET", "/apis/v2beta1/pipelines/p%2D1/versions/v-2").unwrap();
        assert_eq!(e, Endpoint::GetPipelineVersion);
        assert_eq!(p["pipeline_id"], "p-1");
        assert_eq!(p["pipeline_version_id"], "v-2");
        assert_eq!(
            endpoint("GET", "/apis/v2beta1/runs/").unwrap().0,
            Endpoint::ListRuns
        );
    }

    #[test]
    fn unknown_verbs_methods_and_paths_are_told_apart() {
        assert!(matches!(
            find("POST", "/apis/v2beta1/runs/r-1:explode"),
            Found::NotFound
        ));
        assert!(matches!(
            find("PUT", "/apis/v2beta1/runs/r-1"),
            Found::WrongMethod(m) if m == ["GET", "DELETE"]
        ));
        assert!(matches!(
            find("GET", "/apis/v2beta1/artifacts/a1"),
            Found::NotImplemented
        ));
        assert!(matches!(
            find("GET", "/apis/v1beta1/runs"),
            Found::NotImplemented
        ));
        assert!(matches!(
            find("GET", "/apis/v2beta1/nothing"),
            Found::NotFound
        ));
        // An id with a colon or an encoded slash is no id.
        assert!(matches!(
            find("GET", "/apis/v2beta1/runs/a%3Ab"),
            Found::NotFound
        ));
        assert!(matches!(
            find("GET", "/apis/v2beta1/runs/a%2Fb"),
            Found::NotFound
        ));
        assert!(matches!(
            find("GET", "/apis/v2beta1/runs/%zz"),
            Found::NotFound
        ));
    }

    #[test]
    fn every_route_is_in_the_authorization_table() {
        for r in ROUTES {
            assert!(
                crate::auth::lookup(&key(r)).is_some(),
                "{} is not in the authorization table",
                key(r)
            );
        }
        let http_rules = crate::auth::TABLE
            .iter()
            .filter(|r| !r.method.starts_with('/'))
            .count();
        assert_eq!(http_rules, ROUTES.len(), "a table entry without a route");
    }
}
