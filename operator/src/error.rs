//! Why a reconcile failed: the API server (retried with backoff), or something only a person
//! can fix (reported in conditions and Events, retried slowly).

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The resource, or an object it depends on, is not what it must be.
    #[error("{reason}: {message}")]
    Needs {
        /// A CamelCase reason for conditions and Events.
        reason: &'static str,
        message: String,
    },
}

impl Error {
    pub fn needs(reason: &'static str, message: impl Into<String>) -> Error {
        Error::Needs {
            reason,
            message: message.into(),
        }
    }

    /// A CamelCase reason for an Event.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesApiError",
            Error::Needs { reason, .. } => reason,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
