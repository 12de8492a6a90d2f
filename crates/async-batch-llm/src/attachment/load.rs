//! Loading at call time: a request's file parts become inline base64 just
//! before a provider builds its body, and are dropped with the request.

use std::borrow::Cow;

use base64::Engine as _;

use super::{Attachment, Source};
use crate::error::{CallError, ErrorCategory};
use crate::item::Prompt;
use crate::model::LlmRequest;

/// `req` with every file attachment read and encoded as base64 (borrowed
/// untouched when it has none). Files are read on the blocking pool.
pub(crate) async fn load(req: &LlmRequest) -> Result<Cow<'_, LlmRequest>, CallError> {
    let Some(Prompt::Messages(messages)) = &req.prompt else {
        return Ok(Cow::Borrowed(req));
    };
    let has_files = messages
        .iter()
        .flat_map(|m| &m.attachments)
        .any(|a| matches!(a.source(), Source::Path(_)));
    if !has_files {
        return Ok(Cow::Borrowed(req));
    }
    let mut loaded = req.clone();
    let Some(Prompt::Messages(messages)) = &mut loaded.prompt else {
        return Ok(Cow::Borrowed(req));
    };
    for (i, m) in messages.iter_mut().enumerate() {
        for (j, a) in m.attachments.iter_mut().enumerate() {
            if let Source::Path(p) = a.source() {
                let p = p.clone();
                let read = tokio::task::spawn_blocking(move || {
                    std::fs::read(&p)
                        .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
                        .map_err(|e| format!("cannot read {}: {e}", p.display()))
                })
                .await
                .unwrap_or_else(|e| Err(format!("reading the file failed: {e}")));
                let data = read.map_err(|e| {
                    CallError::new(
                        ErrorCategory::ClientError,
                        format!("message {}, attachment {}: {e}", i + 1, j + 1),
                    )
                    .with_retryable(false)
                })?;
                *a = inline_copy(a, data);
            }
        }
    }
    Ok(Cow::Owned(loaded))
}

/// The same part with its bytes inline: its media type, name and probe
/// facts are kept.
fn inline_copy(a: &Attachment, data: String) -> Attachment {
    let mut b = Attachment::base64(data);
    b.media_type = a.media_type();
    b.name = Some(a.file_name());
    b.share_facts(a);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{Message, Role};

    #[tokio::test]
    async fn files_become_base64_and_the_rest_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scan.pdf");
        std::fs::write(&path, b"%PDF-1.4 hello").unwrap();
        let msg = Message::new(Role::User, "read")
            .with_attachment(Attachment::path(&path))
            .with_attachment(Attachment::url("https://x.test/b.png"));
        let req = LlmRequest::new(Prompt::Messages(vec![msg]));
        let loaded = load(&req).await.unwrap();
        let parts: Vec<&Attachment> = loaded.prompt.as_ref().unwrap().attachments().collect();
        assert_eq!(parts[0].inline(), Some("JVBERi0xLjQgaGVsbG8="));
        assert_eq!(parts[0].file_name(), "scan.pdf");
        assert_eq!(parts[0].media_type(), Some(super::super::MediaType::Pdf));
        assert_eq!(
            parts[1].source(),
            &Source::Url("https://x.test/b.png".into())
        );
        let text = LlmRequest::new("plain");
        assert!(matches!(load(&text).await.unwrap(), Cow::Borrowed(_)));
        std::fs::remove_file(&path).unwrap();
        let e = load(&req).await.unwrap_err();
        assert!(
            e.message()
                .starts_with("message 1, attachment 1: cannot read "),
            "{}",
            e.message()
        );
    }
}
