//! What the EC2 backend and the S3 store share about AWS: configuration loaded the AWS way,
//! with runner's retry defaults only where the user set none, and API errors kept whole but
//! shown in one line.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::error::Error;

/// How a client retries unless `AWS_MAX_ATTEMPTS` / `AWS_RETRY_MODE` (or the profile) say.
pub enum Retries {
    /// Client-side rate limiting: throttling slows every caller of the process down.
    Adaptive {
        attempts: u32,
    },
    Standard {
        attempts: u32,
    },
}

/// The standard chain (env, profile, SSO, web identity, instance metadata) plus overrides.
pub async fn config(
    region: Option<&str>,
    endpoint: Option<&str>,
    retries: Retries,
) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    let user_set = ["AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if !user_set {
        loader = loader.retry_config(match retries {
            Retries::Adaptive { attempts } => RetryConfig::adaptive()
                .with_max_attempts(attempts)
                .with_initial_backoff(Duration::from_millis(200)),
            Retries::Standard { attempts } => RetryConfig::standard().with_max_attempts(attempts),
        });
    }
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_owned()));
    }
    if let Some(e) = endpoint {
        loader = loader.endpoint_url(e);
    }
    loader.load().await
}

/// An API failure as [`Error::Aws`]: the service's code (for callers to classify by) and a
/// one-line summary, with the SDK error kept as the source.
pub fn error<E, R>(context: impl Into<String>, e: SdkError<E, R>) -> Error
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = e
        .as_service_error()
        .and_then(|se| se.code())
        .map(str::to_owned);
    let summary = summary(&e);
    Error::Aws {
        context: context.into(),
        code,
        summary,
        source: Box::new(e),
    }
}

/// The service's `code: message` when it answered, else the transport's account (connection
/// refused, timeout) — never the whole response dump.
pub fn summary<E, R>(e: &SdkError<E, R>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(se) => match (se.code(), se.message()) {
            (Some(code), Some(msg)) => format!("{code}: {msg}"),
            (Some(code), None) => code.to_owned(),
            _ => se.to_string(),
        },
        None => aws_smithy_types::error::display::DisplayErrorContext(e).to_string(),
    }
}

/// The raw answer both SDKs' errors carry.
pub type Response = aws_smithy_runtime_api::client::orchestrator::HttpResponse;

/// The HTTP status of the answer, when there was one.
pub fn status<E>(e: &SdkError<E, Response>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}
