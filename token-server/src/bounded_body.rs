//! Answers of other servers (the cluster's discovery and keys, an upstream
//! OpenID Provider's), read up to a bound: a server that sends more is not
//! believed, and cannot make this one hold it.

/// Why an answer was not read.
#[derive(Debug)]
pub enum BodyError {
    /// Longer than the bound (said so by `Content-Length`, or found so).
    TooLarge,
    Read(reqwest::Error),
}

/// The body of `response`, at most `max` bytes.
pub async fn read(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|len| len > max as u64)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// reqwest's message and its causes ("error sending request" alone says little).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
