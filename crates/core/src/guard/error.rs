//! What the guard answers when it cannot produce an outcome, keeping the gRPC code of the
//! Firestore call that failed so callers and log readers can tell why.

use crate::engine::record::Outcome;
use crate::engine::OpError;
use firestore::gcloud_sdk::tonic::Code;

/// A Firestore call that failed, with the gRPC code when the server answered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{call}: {}", match .code { Some(c) => format!("{c:?}: {}", .message), None => .message.clone() })]
pub struct DriverError {
    /// Which call (`read`, `commit`).
    pub call: &'static str,
    /// The server's code; `None` when no answer came in time (the outcome is unknown).
    pub code: Option<Code>,
    /// What the server (or the timeout) said.
    pub message: String,
}

impl DriverError {
    /// A commit refused because a precondition no longer held (`FAILED_PRECONDITION`: a
    /// document changed since it was read; `ALREADY_EXISTS`: a document that was missing now
    /// exists) or because the server aborted it: nothing of it was written, so it may be
    /// decided again on fresh reads.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self.code,
            Some(Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted)
        )
    }

    /// A commit refused for load (`RESOURCE_EXHAUSTED`: the database's writes per second or
    /// a new key range's ramp-up): Firestore asks for a retry with exponential back-off. It
    /// is refused before anything is applied, and even if it had been applied the retry's
    /// preconditions would find its status documents, so retrying is safe.
    pub fn is_overloaded(&self) -> bool {
        self.code == Some(Code::ResourceExhausted)
    }
}

/// Why the guard could not produce an [`Outcome`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuardError {
    /// The key was used before with a different payload; nothing was changed.
    #[error("operation {operation_id} was first seen with a different payload")]
    KeyReused {
        /// The operation ID.
        operation_id: String,
    },
    /// Firestore did not answer, contention was not resolved, or a commit's outcome is unknown.
    /// Nothing is half-written; a redelivery settles it.
    #[error("outcome unknown: {0}")]
    Unavailable(Unavailable),
    /// The operation could not read or write its documents (see [`OpError`]).
    #[error("{0}")]
    Operation(String),
}

impl From<OpError> for GuardError {
    fn from(e: OpError) -> Self {
        GuardError::Operation(e.to_string())
    }
}

/// Why an outcome is unknown. Keeps the Firestore call's gRPC code, so a caller (and a log
/// reader) can tell a conflict that never settled from a call that went unanswered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    /// A Firestore call failed or went unanswered.
    #[error(transparent)]
    Firestore(#[from] DriverError),
    /// Conflicts or failed reads did not settle within the configured attempts.
    #[error("not settled after {attempts} attempts: {}", .last.as_ref().map_or("too many rounds of reads".to_string(), |e| e.to_string()))]
    NotSettled {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error; `None` when operations kept asking for more reads.
        last: Option<DriverError>,
    },
    /// A placeholder inside one fold: the decision waits on documents read in another round
    /// (never answered; the batch is folded again, or gives up with `NotSettled`).
    #[error("decided on a later read")]
    ReadMore,
    /// The batch's task ended without answering (it panicked).
    #[error("the guard task ended")]
    TaskEnded,
    /// A workflow step's outside call failed; its lease was released.
    #[error("step {step}: outside call failed: {message}")]
    Call {
        /// The step.
        step: &'static str,
        /// What the outside system said.
        message: String,
    },
}

impl Unavailable {
    /// The gRPC code Firestore answered with, when it answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            Unavailable::Firestore(e) | Unavailable::NotSettled { last: Some(e), .. } => e.code,
            _ => None,
        }
    }
}

impl From<DriverError> for GuardError {
    fn from(e: DriverError) -> Self {
        GuardError::Unavailable(Unavailable::Firestore(e))
    }
}

/// What the guard answers for one operation.
pub type Reply = Result<Outcome, GuardError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_are_told_from_unknown_outcomes() {
        let e = |code| DriverError {
            call: "commit",
            code,
            message: String::new(),
        };
        assert!(e(Some(Code::FailedPrecondition)).is_conflict());
        assert!(e(Some(Code::AlreadyExists)).is_conflict());
        assert!(e(Some(Code::Aborted)).is_conflict());
        assert!(!e(Some(Code::Unavailable)).is_conflict());
        assert!(!e(Some(Code::DeadlineExceeded)).is_conflict());
        assert!(!e(None).is_conflict());
        assert!(e(Some(Code::ResourceExhausted)).is_overloaded());
        assert!(!e(Some(Code::ResourceExhausted)).is_conflict());
        assert!(!e(Some(Code::Unavailable)).is_overloaded());
        assert!(!e(None).is_overloaded());
    }
}
