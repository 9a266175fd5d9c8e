//! The size bound of a request message (`grpc.max_message_bytes`), answered as gRPC's own
//! servers answer it. tonic refuses a message above its decoding limit with OUT_OF_RANGE;
//! clients (and gRPC's status code guide) expect RESOURCE_EXHAUSTED for a message larger than
//! the server accepts, so this layer relabels that one refusal, keeping tonic's words (which
//! give both sizes) and naming the setting.
//!
//! tonic sends the refusal in the trailers (the headers left before the body was read), or
//! in the headers of a trailers-only response: both are relabelled, nothing else is touched.

use futures::TryFutureExt;
use tonic::codegen::http;

const TONIC_TOO_LARGE: &str = "decoded message length too large";

/// Relabels tonic's refusal of a request above its decoding limit as RESOURCE_EXHAUSTED.
#[derive(Clone, Copy, Debug, Default)]
pub struct MessageLimitLayer;

impl<S> tower_layer::Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> MessageLimit<S> {
        MessageLimit { inner }
    }
}

/// A service behind [`MessageLimitLayer`].
#[derive(Clone, Debug)]
pub struct MessageLimit<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for MessageLimit<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<Relabelled<ResBody>>;
    type Error = S::Error;
    type Future = futures::future::MapOk<S::Future, Relabel<ResBody>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        self.inner.call(request).map_ok(relabel as Relabel<ResBody>)
    }
}

type Relabel<B> = fn(http::Response<B>) -> http::Response<Relabelled<B>>;

fn relabel<B>(response: http::Response<B>) -> http::Response<Relabelled<B>> {
    let (mut parts, body) = response.into_parts();
    relabel_too_large(&mut parts.headers);
    http::Response::from_parts(parts, Relabelled { inner: body })
}

/// A response body whose trailers are relabelled as its headers are.
#[derive(Debug, Default)]
pub struct Relabelled<B> {
    inner: B,
}

impl<B: http_body::Body + Unpin> http_body::Body for Relabelled<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let polled = std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(cx);
        polled.map(|frame| {
            frame.map(|frame| {
                frame.map(|mut frame| {
                    if let Some(trailers) = frame.trailers_mut() {
                        relabel_too_large(trailers);
                    }
                    frame
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// OUT_OF_RANGE "decoded message length too large" as RESOURCE_EXHAUSTED; any other status
/// as it is.
fn relabel_too_large(headers: &mut http::HeaderMap) {
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|s| s.as_bytes() == b"11");
    // The message travels percent-encoded (a space is %20), and stays so.
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .filter(|m| m.replace("%20", " ").contains(TONIC_TOO_LARGE))
        .map(str::to_string);
    if let (true, Some(message)) = (out_of_range, message) {
        let relabelled =
            format!("the%20request%20is%20larger%20than%20grpc.max_message_bytes:%20{message}");
        if let Ok(value) = http::HeaderValue::from_str(&relabelled) {
            headers.insert("grpc-status", http::HeaderValue::from_static("8"));
            headers.insert("grpc-message", value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: &'static str, message: &'static str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static(status));
        h.insert("grpc-message", http::HeaderValue::from_static(message));
        h
    }

    fn relabelled(mut headers: http::HeaderMap) -> http::HeaderMap {
        relabel_too_large(&mut headers);
        headers
    }

    #[test]
    fn only_the_too_large_refusal_is_relabelled() {
        let too_large = relabelled(response(
            "11",
            "Error,%20decoded%20message%20length%20too%20large:%20found%205000000%20bytes,%20the%20limit%20is:%204194304%20bytes",
        ));
        assert_eq!(too_large["grpc-status"], "8");
        let message = too_large["grpc-message"].to_str().unwrap();
        assert!(
            message.contains("grpc.max_message_bytes") && message.contains("4194304"),
            "{message}"
        );
        let other = relabelled(response("11", "page out of range"));
        assert_eq!(other["grpc-status"], "11");
        let not_found = relabelled(response("5", TONIC_TOO_LARGE));
        assert_eq!(not_found["grpc-status"], "5");
    }
}
