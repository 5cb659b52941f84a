//! The gRPC contract between the Terraform provider and the service.
//!
//! Module map:
//! - [`pb`]: the generated prost messages and tonic clients/servers of
//!   `proto/computearbitrage/v1/computearbitrage.proto`.
//! - [`connect`]: how clients reach the service (http, or https with system roots
//!   and an optional CA file), and plain words for a failed connection.
//! - [`validate`]: the rules every request must satisfy, shared so that the provider
//!   reports bad values at plan time, on the attribute's path, and the service rejects
//!   them from any other client with the same words.
//! - [`ERROR_FIELD_METADATA`]: where an INVALID_ARGUMENT status names the bad field.
//! - [`Reason`], [`ERROR_REASON_METADATA`], [`ERROR_RETRYABLE_METADATA`]: why a call
//!   failed and whether retrying can help, so clients never parse message text.
//!
//! This crate knows nothing of the service's internals or of Terraform.

pub mod connect;
pub mod validate;

/// Generated code for package `computearbitrage.v1`.
pub mod pb {
    tonic::include_proto!("computearbitrage.v1");
}

/// The API package name, returned by `Version`.
pub const API_VERSION: &str = "computearbitrage.v1";

/// Response metadata key carrying the dotted path of the offending field on
/// INVALID_ARGUMENT (`requirements.providers[1]`).
pub const ERROR_FIELD_METADATA: &str = "x-computearbitrage-field";

/// Response metadata key carrying a [`Reason`] code on every error the service
/// returns itself. A status without it came from the transport.
pub const ERROR_REASON_METADATA: &str = "x-computearbitrage-reason";

/// Response metadata key: `true` when the same call may succeed if retried later.
pub const ERROR_RETRYABLE_METADATA: &str = "x-computearbitrage-retryable";

/// Response metadata key of a rate-limited call (reason `rate-limited`): the
/// milliseconds to wait before the next call will be admitted.
pub const RETRY_AFTER_METADATA: &str = "x-computearbitrage-retry-after-ms";

/// The wait a status asks for before a retry, if it names one.
pub fn retry_after(status: &tonic::Status) -> Option<std::time::Duration> {
    status
        .metadata()
        .get(RETRY_AFTER_METADATA)?
        .to_str()
        .ok()?
        .parse::<u64>()
        .ok()
        .map(std::time::Duration::from_millis)
}

/// The cloud names the API accepts.
pub const CLOUDS: [&str; 3] = computearbitrage_conventions::CLOUDS;

/// The canonical spelling of an architecture the API accepts (`amd64` → `x86_64`).
pub use computearbitrage_conventions::architecture as canonical_architecture;
/// The canonical spelling of an address range (`10.0.0.0/8`).
pub use computearbitrage_conventions::cidr::canonical as canonical_cidr;
/// Who may reach a TCP endpoint when a workload does not say: this machine only.
pub use computearbitrage_conventions::cidr::DEFAULT_TCP_ALLOWED;
/// What a spec's absent fields mean.
pub use computearbitrage_conventions::defaults;
/// The canonical name of a GPU model (`nvidia-tesla-a100` → `A100`).
pub use computearbitrage_conventions::gpu::canonical as canonical_gpu;

/// Why a call failed: one stable code per cause, so each gets its own diagnostic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A request field is invalid (INVALID_ARGUMENT, with the field).
    InvalidArgument,
    /// The token is missing, unknown, expired or revoked (UNAUTHENTICATED).
    Unauthenticated,
    /// The token's scope does not allow the call (PERMISSION_DENIED).
    PermissionDenied,
    /// The workload, run or token does not exist for this tenant (NOT_FOUND).
    NotFound,
    /// No offer matches the requirements (FAILED_PRECONDITION).
    NoMatchingOffer,
    /// The workload has terminated and cannot change (FAILED_PRECONDITION).
    WorkloadTerminated,
    /// The operation needs a workload in another state (FAILED_PRECONDITION).
    WrongWorkloadState,
    /// The change cannot be made in place (FAILED_PRECONDITION).
    NeedsReplacement,
    /// An active workload of this name exists with a different spec (ALREADY_EXISTS).
    NameTaken,
    /// The tenant's quota of workloads is used up (RESOURCE_EXHAUSTED).
    QuotaExceeded,
    /// Too many calls with this token; retry after the delay (RESOURCE_EXHAUSTED).
    RateLimited,
    /// A shared resource ran out, such as router TCP ports (RESOURCE_EXHAUSTED).
    Exhausted,
    /// The service's database failed in a way a retry may fix (UNAVAILABLE).
    StoreUnavailable,
    /// A cloud driver failed in a way a retry may fix (UNAVAILABLE).
    DriverUnavailable,
    /// Workload storage (the object store) failed in a way a retry may fix (UNAVAILABLE).
    StorageUnavailable,
    /// Anything else inside the service (INTERNAL).
    Internal,
}

impl Reason {
    pub const ALL: [Reason; 16] = [
        Reason::InvalidArgument,
        Reason::Unauthenticated,
        Reason::PermissionDenied,
        Reason::NotFound,
        Reason::NoMatchingOffer,
        Reason::WorkloadTerminated,
        Reason::WrongWorkloadState,
        Reason::NeedsReplacement,
        Reason::NameTaken,
        Reason::QuotaExceeded,
        Reason::RateLimited,
        Reason::Exhausted,
        Reason::StoreUnavailable,
        Reason::DriverUnavailable,
        Reason::StorageUnavailable,
        Reason::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidArgument => "invalid-argument",
            Reason::Unauthenticated => "unauthenticated",
            Reason::PermissionDenied => "permission-denied",
            Reason::NotFound => "not-found",
            Reason::NoMatchingOffer => "no-matching-offer",
            Reason::WorkloadTerminated => "workload-terminated",
            Reason::WrongWorkloadState => "wrong-workload-state",
            Reason::NeedsReplacement => "needs-replacement",
            Reason::NameTaken => "name-taken",
            Reason::QuotaExceeded => "quota-exceeded",
            Reason::RateLimited => "rate-limited",
            Reason::Exhausted => "exhausted",
            Reason::StoreUnavailable => "store-unavailable",
            Reason::DriverUnavailable => "driver-unavailable",
            Reason::StorageUnavailable => "storage-unavailable",
            Reason::Internal => "internal",
        }
    }

    pub fn parse(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == code)
    }

    /// The gRPC code the service answers this reason with.
    pub fn code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            Reason::InvalidArgument => Code::InvalidArgument,
            Reason::Unauthenticated => Code::Unauthenticated,
            Reason::PermissionDenied => Code::PermissionDenied,
            Reason::NotFound => Code::NotFound,
            Reason::NoMatchingOffer
            | Reason::WorkloadTerminated
            | Reason::WrongWorkloadState
            | Reason::NeedsReplacement => Code::FailedPrecondition,
            Reason::NameTaken => Code::AlreadyExists,
            Reason::QuotaExceeded | Reason::RateLimited | Reason::Exhausted => {
                Code::ResourceExhausted
            }
            Reason::StoreUnavailable | Reason::DriverUnavailable | Reason::StorageUnavailable => {
                Code::Unavailable
            }
            Reason::Internal => Code::Internal,
        }
    }

    /// A status with this reason, its retryability and a message, as the service sends it.
    pub fn status(self, retryable: bool, message: impl Into<String>) -> tonic::Status {
        let mut status = tonic::Status::new(self.code(), message);
        let metadata = status.metadata_mut();
        metadata.insert(
            ERROR_REASON_METADATA,
            tonic::metadata::MetadataValue::from_static(self.as_str()),
        );
        metadata.insert(
            ERROR_RETRYABLE_METADATA,
            tonic::metadata::MetadataValue::from_static(if retryable { "true" } else { "false" }),
        );
        status
    }

    /// The reason a status carries, if the service sent it.
    pub fn of(status: &tonic::Status) -> Option<Reason> {
        status
            .metadata()
            .get(ERROR_REASON_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(Reason::parse)
    }
}

/// Whether a status says a retry may help: the service's flag when it sent one,
/// else (a transport failure) UNAVAILABLE or DEADLINE_EXCEEDED.
pub fn is_retryable(status: &tonic::Status) -> bool {
    match status
        .metadata()
        .get(ERROR_RETRYABLE_METADATA)
        .and_then(|v| v.to_str().ok())
    {
        Some(flag) => flag == "true",
        None => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
    }
}

/// Default and maximum page sizes of `ListOffers`.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Maximum `alternatives` of `FindPlacement`.
pub const MAX_ALTERNATIVES: u32 = 50;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_through_status_metadata() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
            let status = reason.status(true, "m");
            assert_eq!(Reason::of(&status), Some(reason));
            assert_eq!(status.code(), reason.code());
            assert!(is_retryable(&status));
            assert!(!is_retryable(&reason.status(false, "m")));
        }
        // A transport failure has no reason; retryability follows the code.
        assert!(is_retryable(&tonic::Status::unavailable("connect refused")));
        assert!(!is_retryable(&tonic::Status::internal("x")));
        assert_eq!(Reason::of(&tonic::Status::unavailable("x")), None);
    }
}
