//! Exit codes, part of the CLI's stable contract.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (with `--wait`: the run SUCCEEDED) |
//! | 1 | the run FAILED |
//! | 2 | refused input: bad file, bad parameter, invalid pipeline, unknown id |
//! | 3 | the run was CANCELED |
//! | 4 | the coordinator is unreachable or answered with an internal error |
//! | 5 | not allowed: no token, a bad, expired or revoked one, or a role without the right |

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("run {0} failed")]
    RunFailed(String),
    #[error("run {0} was canceled")]
    RunCanceled(String),
    #[error("{0}")]
    NotAllowed(String),
}

impl CliError {
    pub fn code(&self) -> i32 {
        match self {
            CliError::RunFailed(_) => 1,
            CliError::Refused(_) => 2,
            CliError::RunCanceled(_) => 3,
            CliError::Unavailable(_) => 4,
            CliError::NotAllowed(_) => 5,
        }
    }
}

/// A malformed `KEY=VALUE` flag is refused input.
impl From<gantry_model::flags::KeyValueError> for CliError {
    fn from(e: gantry_model::flags::KeyValueError) -> Self {
        CliError::Refused(e.to_string())
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        match s.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::ResourceExhausted => CliError::Refused(s.message().to_string()),
            Code::Unauthenticated | Code::PermissionDenied => {
                CliError::NotAllowed(format!("not allowed: {}", s.message()))
            }
            _ => CliError::Unavailable(format!("{}: {}", s.code(), s.message())),
        }
    }
}
