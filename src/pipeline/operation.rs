//! Every OpenAI operation llmux serves, as a type: its path, what its body is, whether its answers
//! carry token usage and whether llmux may ask a stream for it. A new family (files, batches,
//! realtime, ...) is a new variant here plus its route line in `api/mod.rs`.

/// What a request of an operation carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// A JSON object with a `model` member, read whole (`--max-body-bytes`).
    Json,
    /// multipart/form-data with a `model` field, streamed (`--max-upload-bytes`).
    Multipart,
    /// No body: the operation names what it works on in its URL.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    ChatCompletions,
    Completions,
    Embeddings,
    Moderations,
    AudioSpeech,
    AudioTranscriptions,
    AudioTranslations,
    ImagesGenerations,
    ImagesEdits,
    ImagesVariations,
    /// GET /v1/images/data/{model}/{id}: images this instance serves (fast-openai-api-proxy).
    ImagesData,
    Responses,
    ResponsesInputTokens,
    ResponsesCompact,
    ResponsesRetrieve,
    ResponsesDelete,
    ResponsesCancel,
    ResponsesInputItems,
}

impl Operation {
    /// The operations that take a JSON body with a `model` and are forwarded to its endpoint.
    pub const JSON: &'static [Operation] = &[
        Self::ChatCompletions,
        Self::Completions,
        Self::Embeddings,
        Self::Moderations,
        Self::AudioSpeech,
        Self::ImagesGenerations,
        Self::Responses,
        Self::ResponsesInputTokens,
        Self::ResponsesCompact,
    ];

    /// The operations that take a multipart/form-data body with a `model` field.
    pub const MULTIPART: &'static [Operation] = &[
        Self::AudioTranscriptions,
        Self::AudioTranslations,
        Self::ImagesEdits,
        Self::ImagesVariations,
    ];

    /// The path as routes name it in config files (no leading slash; `{id}` where the URL has
    /// an id). Also the `path` of the access log and the metrics.
    pub const fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "v1/chat/completions",
            Self::Completions => "v1/completions",
            Self::Embeddings => "v1/embeddings",
            Self::Moderations => "v1/moderations",
            Self::AudioSpeech => "v1/audio/speech",
            Self::AudioTranscriptions => "v1/audio/transcriptions",
            Self::AudioTranslations => "v1/audio/translations",
            Self::ImagesGenerations => "v1/images/generations",
            Self::ImagesEdits => "v1/images/edits",
            Self::ImagesVariations => "v1/images/variations",
            Self::ImagesData => "v1/images/data",
            Self::Responses => "v1/responses",
            Self::ResponsesInputTokens => "v1/responses/input_tokens",
            Self::ResponsesCompact => "v1/responses/compact",
            Self::ResponsesRetrieve | Self::ResponsesDelete => "v1/responses/{id}",
            Self::ResponsesCancel => "v1/responses/{id}/cancel",
            Self::ResponsesInputItems => "v1/responses/{id}/input_items",
        }
    }

    pub const fn method(self) -> &'static str {
        match self {
            Self::ImagesData | Self::ResponsesRetrieve | Self::ResponsesInputItems => "GET",
            Self::ResponsesDelete => "DELETE",
            _ => "POST",
        }
    }

    pub const fn body_kind(self) -> BodyKind {
        match self {
            Self::AudioTranscriptions
            | Self::AudioTranslations
            | Self::ImagesEdits
            | Self::ImagesVariations => BodyKind::Multipart,
            Self::ImagesData
            | Self::ResponsesRetrieve
            | Self::ResponsesDelete
            | Self::ResponsesCancel
            | Self::ResponsesInputItems => BodyKind::None,
            _ => BodyKind::Json,
        }
    }

    /// Whether its answers carry token usage (read by the usage tap, estimated when missing).
    pub const fn counts_tokens(self) -> bool {
        matches!(
            self,
            Self::ChatCompletions | Self::Completions | Self::Embeddings | Self::Responses
        )
    }

    /// Whether llmux may add `stream_options.include_usage` to a stream of it (and remove the
    /// usage event again when the client did not ask for it).
    pub const fn can_ask_for_usage(self) -> bool {
        matches!(self, Self::ChatCompletions | Self::Completions)
    }

    /// Whether a request continues a stored response with `previous_response_id` (the member
    /// that created it must serve it).
    pub const fn continues_responses(self) -> bool {
        matches!(
            self,
            Self::Responses | Self::ResponsesInputTokens | Self::ResponsesCompact
        )
    }

    /// Whether the answer creates a stored response whose id is remembered.
    pub const fn creates_response(self) -> bool {
        matches!(self, Self::Responses)
    }

    /// The route whose pool serves it when the model has no route of its own for it: counting
    /// input tokens and compacting belong to the Responses API and go to the same upstream.
    pub const fn parent(self) -> Option<Operation> {
        match self {
            Self::ResponsesInputTokens | Self::ResponsesCompact => Some(Self::Responses),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_routed_operation_has_its_body_kind() {
        for operation in Operation::JSON {
            assert_eq!(operation.body_kind(), BodyKind::Json, "{operation:?}");
            assert_eq!(operation.method(), "POST");
        }
        for operation in Operation::MULTIPART {
            assert_eq!(operation.body_kind(), BodyKind::Multipart, "{operation:?}");
        }
        assert!(Operation::ChatCompletions.can_ask_for_usage());
        assert!(!Operation::Embeddings.can_ask_for_usage());
        assert!(Operation::Embeddings.counts_tokens());
        assert_eq!(
            Operation::ResponsesCompact.parent(),
            Some(Operation::Responses)
        );
    }
}
