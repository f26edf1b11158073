//! KFP pipeline IR → validated [`PipelineSpec`].
//!
//! - [`parse_pipeline`]: YAML (one or more documents) → a spec that passed every check in
//!   `validate` (references, types, cycles, safe names, conditions that compile).
//! - [`resolve_run_parameters`]: a run's parameters checked against the pipeline's inputs.
//! - [`bounds`]: what one submission may ask: document size, tasks per run, JSON depth.
//! - [`condition`]: trigger conditions (CEL) compiled and evaluated.
//! - [`selector`]: `parameterExpressionSelector`s (CEL over one input value).
//! - [`uri_policy`]: which artifact URIs a run may read (import roots, buckets).
//!
//! Errors are [`IrError`]s naming their path in the document.

pub mod bounds;
pub mod cel;
pub mod condition;
mod error;
pub mod model;
mod params;
mod parse;
mod quantity;
pub mod selector;
mod validate;

pub use error::IrError;
/// The URI policy lives in `gantry-model`: agents apply it too.
pub use gantry_model::uri_policy::{self, UriPolicy};
pub use model::*;
pub use params::{resolve_run_artifacts, resolve_run_parameters};
pub use parse::{parse_pipeline, pipeline_documents};
pub use quantity::{
    parse_accelerator_count, parse_cpu_quantity, parse_memory_quantity, QuantityError,
};
