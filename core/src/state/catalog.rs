//! What Kubeflow users keep beside their runs: experiments, pipelines and pipeline versions,
//! and what the KFP API attaches to a run (its name, experiment, source, archive flag). Part
//! of the replicated state, so every coordinator answers the KFP REST API alike.
//!
//! Ids and times are chosen by the proposer; apply checks names and references again, so two
//! racing creations of one name end with one record and one clear refusal.

use std::collections::BTreeMap;

use gantry_model::RunId;
use serde::{Deserialize, Serialize};

/// The longest name or display name, in bytes.
pub const MAX_NAME_BYTES: usize = 512;
/// The longest description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 8 * 1024;
/// Most experiments, pipelines and versions, each: the catalog lives in every node's memory
/// and every snapshot.
pub const MAX_RECORDS: usize = 100_000;
/// Most bytes of pipeline text the catalog keeps in all (versions' YAML), for the same reason.
pub const MAX_PIPELINE_TEXT_BYTES: usize = 1 << 30;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    pub id: String,
    /// Unique among experiments.
    pub display_name: String,
    #[serde(default)]
    pub description: String,
    pub created_at: i64,
    #[serde(default)]
    pub archived: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub id: String,
    /// Unique among pipelines.
    pub name: String,
    pub display_name: String,
    #[serde(default)]
    pub description: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineVersion {
    pub id: String,
    pub pipeline_id: String,
    /// Unique among the versions of its pipeline.
    pub name: String,
    pub display_name: String,
    #[serde(default)]
    pub description: String,
    pub created_at: i64,
    /// The compiled pipeline as uploaded (checked to parse before it was proposed).
    pub pipeline_yaml: String,
}

/// A run's source when it was created from a stored pipeline version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRef {
    pub pipeline_id: String,
    pub pipeline_version_id: String,
}

/// What the KFP API knows of a run beyond the run itself. Runs submitted through Gantry's
/// own API have none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub display_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_version: Option<VersionRef>,
    /// The recurring run that started it, and the tick (Unix seconds) it fired for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recurring_run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<i64>,
    /// Kubernetes' notion, kept and echoed only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account: String,
    #[serde(default)]
    pub archived: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    #[serde(default)]
    pub experiments: BTreeMap<String, Experiment>,
    #[serde(default)]
    pub pipelines: BTreeMap<String, Pipeline>,
    #[serde(default)]
    pub versions: BTreeMap<String, PipelineVersion>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CatalogError {
    #[error("an experiment named {0:?} already exists")]
    ExperimentExists(String),
    #[error("experiment {0} not found")]
    ExperimentNotFound(String),
    #[error("experiment {id} still holds {runs} runs: delete them first")]
    ExperimentHasRuns { id: String, runs: usize },
    #[error("a pipeline named {0:?} already exists")]
    PipelineExists(String),
    #[error("pipeline {0} not found")]
    PipelineNotFound(String),
    #[error(
        "pipeline {id} has {versions} versions: delete them first, or delete with cascade=true"
    )]
    PipelineHasVersions { id: String, versions: usize },
    #[error("pipeline {pipeline_id} already has a version named {name:?}")]
    VersionExists { pipeline_id: String, name: String },
    #[error("pipeline version {version_id} not found in pipeline {pipeline_id}")]
    VersionNotFound {
        pipeline_id: String,
        version_id: String,
    },
    #[error("{what} already exists")]
    IdTaken { what: String },
    #[error("recurring run {0} not found")]
    RecurringRunNotFound(String),
    #[error("experiment {id} still holds {schedules} recurring runs: delete them first")]
    ExperimentHasSchedules { id: String, schedules: usize },
    /// A firing apply refused: fired already, disabled meanwhile, or no free slot.
    #[error("{0}")]
    NotFired(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the catalog holds {max} {what} already, the most it keeps")]
    Full { what: &'static str, max: usize },
}

/// Checks a name: not empty, at most [`MAX_NAME_BYTES`], no control characters.
pub fn check_name(field: &str, name: &str) -> Result<(), CatalogError> {
    if name.trim().is_empty() {
        return Err(CatalogError::Invalid(format!("{field} must not be empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(CatalogError::Invalid(format!(
            "{field} is {} bytes long; the most is {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(CatalogError::Invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

pub fn check_description(description: &str) -> Result<(), CatalogError> {
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(CatalogError::Invalid(format!(
            "description is {} bytes long; the most is {MAX_DESCRIPTION_BYTES}",
            description.len()
        )));
    }
    Ok(())
}

/// Ids travel in URL paths, where KFP puts a `:verb` after them.
pub fn check_id(field: &str, id: &str) -> Result<(), CatalogError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(CatalogError::Invalid(format!(
            "{field} {id:?} is not an id (1 to 128 of A-Z a-z 0-9 - _ .)"
        )))
    }
}

fn check_room(len: usize, what: &'static str) -> Result<(), CatalogError> {
    if len >= MAX_RECORDS {
        return Err(CatalogError::Full {
            what,
            max: MAX_RECORDS,
        });
    }
    Ok(())
}

impl Catalog {
    pub fn is_empty(&self) -> bool {
        self.experiments.is_empty() && self.pipelines.is_empty() && self.versions.is_empty()
    }

    pub fn experiment_named(&self, name: &str) -> Option<&Experiment> {
        self.experiments.values().find(|e| e.display_name == name)
    }

    pub fn pipeline_named(&self, name: &str) -> Option<&Pipeline> {
        self.pipelines.values().find(|p| p.name == name)
    }

    /// The versions of a pipeline, oldest first.
    pub fn versions_of<'a>(
        &'a self,
        pipeline_id: &'a str,
    ) -> impl Iterator<Item = &'a PipelineVersion> + 'a {
        self.versions
            .values()
            .filter(move |v| v.pipeline_id == pipeline_id)
    }

    /// The newest version of a pipeline.
    pub fn latest_version<'a>(&'a self, pipeline_id: &'a str) -> Option<&'a PipelineVersion> {
        self.versions_of(pipeline_id)
            .max_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)))
    }

    /// The version `version_id` of `pipeline_id`.
    pub fn version(
        &self,
        pipeline_id: &str,
        version_id: &str,
    ) -> Result<&PipelineVersion, CatalogError> {
        self.versions
            .get(version_id)
            .filter(|v| v.pipeline_id == pipeline_id)
            .ok_or_else(|| CatalogError::VersionNotFound {
                pipeline_id: pipeline_id.to_string(),
                version_id: version_id.to_string(),
            })
    }

    pub(super) fn create_experiment(&mut self, e: Experiment) -> Result<(), CatalogError> {
        check_id("experiment_id", &e.id)?;
        check_name("display_name", &e.display_name)?;
        check_description(&e.description)?;
        check_room(self.experiments.len(), "experiments")?;
        if self.experiment_named(&e.display_name).is_some() {
            return Err(CatalogError::ExperimentExists(e.display_name));
        }
        if self.experiments.contains_key(&e.id) {
            return Err(CatalogError::IdTaken {
                what: format!("experiment {}", e.id),
            });
        }
        self.experiments.insert(e.id.clone(), e);
        Ok(())
    }

    pub(super) fn set_experiment_archived(
        &mut self,
        id: &str,
        archived: bool,
    ) -> Result<(), CatalogError> {
        let e = self
            .experiments
            .get_mut(id)
            .ok_or_else(|| CatalogError::ExperimentNotFound(id.to_string()))?;
        e.archived = archived;
        Ok(())
    }

    /// `runs`: how many runs the experiment still holds.
    pub(super) fn delete_experiment(&mut self, id: &str, runs: usize) -> Result<(), CatalogError> {
        if !self.experiments.contains_key(id) {
            return Err(CatalogError::ExperimentNotFound(id.to_string()));
        }
        if runs > 0 {
            return Err(CatalogError::ExperimentHasRuns {
                id: id.to_string(),
                runs,
            });
        }
        self.experiments.remove(id);
        Ok(())
    }

    /// A pipeline, with its first version when the upload brought one. Both or neither.
    pub(super) fn create_pipeline(
        &mut self,
        p: Pipeline,
        version: Option<PipelineVersion>,
    ) -> Result<(), CatalogError> {
        check_id("pipeline_id", &p.id)?;
        check_name("name", &p.name)?;
        check_name("display_name", &p.display_name)?;
        check_description(&p.description)?;
        check_room(self.pipelines.len(), "pipelines")?;
        if self.pipeline_named(&p.name).is_some() {
            return Err(CatalogError::PipelineExists(p.name));
        }
        if self.pipelines.contains_key(&p.id) {
            return Err(CatalogError::IdTaken {
                what: format!("pipeline {}", p.id),
            });
        }
        if let Some(v) = &version {
            if v.pipeline_id != p.id {
                return Err(CatalogError::Invalid(format!(
                    "the first version names pipeline {}, not {}",
                    v.pipeline_id, p.id
                )));
            }
            self.check_version(v)?;
        }
        self.pipelines.insert(p.id.clone(), p);
        if let Some(v) = version {
            self.versions.insert(v.id.clone(), v);
        }
        Ok(())
    }

    fn check_version(&self, v: &PipelineVersion) -> Result<(), CatalogError> {
        check_id("pipeline_version_id", &v.id)?;
        let stored: usize = self.versions.values().map(|o| o.pipeline_yaml.len()).sum();
        if stored.saturating_add(v.pipeline_yaml.len()) > MAX_PIPELINE_TEXT_BYTES {
            return Err(CatalogError::Full {
                what: "bytes of pipeline text",
                max: MAX_PIPELINE_TEXT_BYTES,
            });
        }
        check_name("name", &v.name)?;
        check_name("display_name", &v.display_name)?;
        check_description(&v.description)?;
        check_room(self.versions.len(), "pipeline versions")?;
        if self.versions.contains_key(&v.id) {
            return Err(CatalogError::IdTaken {
                what: format!("pipeline version {}", v.id),
            });
        }
        if self.versions_of(&v.pipeline_id).any(|o| o.name == v.name) {
            return Err(CatalogError::VersionExists {
                pipeline_id: v.pipeline_id.clone(),
                name: v.name.clone(),
            });
        }
        Ok(())
    }

    pub(super) fn create_version(&mut self, v: PipelineVersion) -> Result<(), CatalogError> {
        if !self.pipelines.contains_key(&v.pipeline_id) {
            return Err(CatalogError::PipelineNotFound(v.pipeline_id));
        }
        self.check_version(&v)?;
        self.versions.insert(v.id.clone(), v);
        Ok(())
    }

    pub(super) fn delete_pipeline(&mut self, id: &str, cascade: bool) -> Result<(), CatalogError> {
        if !self.pipelines.contains_key(id) {
            return Err(CatalogError::PipelineNotFound(id.to_string()));
        }
        let versions: Vec<String> = self.versions_of(id).map(|v| v.id.clone()).collect();
        if !versions.is_empty() && !cascade {
            return Err(CatalogError::PipelineHasVersions {
                id: id.to_string(),
                versions: versions.len(),
            });
        }
        for v in versions {
            self.versions.remove(&v);
        }
        self.pipelines.remove(id);
        Ok(())
    }

    pub(super) fn delete_version(
        &mut self,
        pipeline_id: &str,
        version_id: &str,
    ) -> Result<(), CatalogError> {
        self.version(pipeline_id, version_id)?;
        self.versions.remove(version_id);
        Ok(())
    }
}

/// How many of `runs` (id, info) belong to experiment `id`.
pub(super) fn runs_in_experiment<'a>(
    runs: impl Iterator<Item = (&'a RunId, Option<&'a RunInfo>)>,
    id: &str,
) -> usize {
    runs.filter(|(_, info)| info.and_then(|i| i.experiment_id.as_deref()) == Some(id))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(id: &str, name: &str) -> Experiment {
        Experiment {
            id: id.into(),
            display_name: name.into(),
            description: String::new(),
            created_at: 1,
            archived: false,
        }
    }

    fn pipeline(id: &str, name: &str) -> Pipeline {
        Pipeline {
            id: id.into(),
            name: name.into(),
            display_name: name.into(),
            description: String::new(),
            created_at: 1,
        }
    }

    fn version(id: &str, pipeline_id: &str, name: &str, at: i64) -> PipelineVersion {
        PipelineVersion {
            id: id.into(),
            pipeline_id: pipeline_id.into(),
            name: name.into(),
            display_name: name.into(),
            description: String::new(),
            created_at: at,
            pipeline_yaml: "x".into(),
        }
    }

    #[test]
    fn names_are_unique_and_a_refusal_changes_nothing() {
        let mut c = Catalog::default();
        c.create_experiment(exp("e1", "Default")).unwrap();
        let before = c.clone();
        assert_eq!(
            c.create_experiment(exp("e2", "Default")),
            Err(CatalogError::ExperimentExists("Default".into()))
        );
        assert!(matches!(
            c.create_experiment(exp("e1", "other")),
            Err(CatalogError::IdTaken { .. })
        ));
        assert!(matches!(
            c.create_experiment(exp("e:3", "x")),
            Err(CatalogError::Invalid(_))
        ));
        assert!(matches!(
            c.create_experiment(exp("e3", " ")),
            Err(CatalogError::Invalid(_))
        ));
        assert_eq!(c, before);

        c.create_pipeline(
            pipeline("p1", "hello"),
            Some(version("v1", "p1", "hello", 1)),
        )
        .unwrap();
        let before = c.clone();
        assert_eq!(
            c.create_pipeline(pipeline("p2", "hello"), None),
            Err(CatalogError::PipelineExists("hello".into()))
        );
        assert_eq!(
            c.create_version(version("v2", "p1", "hello", 2)),
            Err(CatalogError::VersionExists {
                pipeline_id: "p1".into(),
                name: "hello".into()
            })
        );
        assert_eq!(
            c.create_version(version("v2", "nope", "x", 2)),
            Err(CatalogError::PipelineNotFound("nope".into()))
        );
        assert_eq!(c, before);
    }

    #[test]
    fn a_pipeline_with_versions_goes_only_with_cascade_and_takes_them_along() {
        let mut c = Catalog::default();
        c.create_pipeline(pipeline("p1", "a"), Some(version("v1", "p1", "one", 1)))
            .unwrap();
        c.create_version(version("v2", "p1", "two", 2)).unwrap();
        c.create_pipeline(pipeline("p2", "b"), Some(version("v3", "p2", "one", 3)))
            .unwrap();
        assert_eq!(c.latest_version("p1").map(|v| v.id.as_str()), Some("v2"));
        assert!(c.version("p2", "v1").is_err(), "v1 is p1's");
        assert_eq!(
            c.delete_pipeline("p1", false),
            Err(CatalogError::PipelineHasVersions {
                id: "p1".into(),
                versions: 2
            })
        );
        c.delete_version("p1", "v1").unwrap();
        c.delete_pipeline("p1", true).unwrap();
        assert!(!c.pipelines.contains_key("p1"));
        assert_eq!(c.versions.keys().collect::<Vec<_>>(), ["v3"]);
    }

    #[test]
    fn an_experiment_with_runs_is_not_deleted() {
        let mut c = Catalog::default();
        c.create_experiment(exp("e1", "x")).unwrap();
        let info = RunInfo {
            experiment_id: Some("e1".into()),
            ..Default::default()
        };
        let run: RunId = "r1".into();
        let n = runs_in_experiment([(&run, Some(&info)), (&run, None)].into_iter(), "e1");
        assert_eq!(n, 1);
        assert!(c.delete_experiment("e1", n).is_err());
        c.delete_experiment("e1", 0).unwrap();
        assert_eq!(
            c.delete_experiment("e1", 0),
            Err(CatalogError::ExperimentNotFound("e1".into()))
        );
    }
}
