//! The model-less OpenAI families (files, uploads, batches, vector stores, containers,
//! conversations, assistants, threads, fine-tuning, evals, videos, audio voices, stored chat
//! completions): every path of each, as a table of `FamilyRoute`s (each one an `Operation`), and
//! the names the config uses for them (`"families": [...]` on a provider).
//!
//! A provider that serves a family gets one endpoint for it in the routing table, under the
//! reserved model name `@{family}` (`@files`) with the family's base path (`v1/files`): the
//! table's pools, reloads, breakers and id owners then work for families as they do for models.
//! Names starting with `@` are never a client's model (route refuses them, `/v1/models` hides
//! them).

/// What marks a routing-table model as a family's (or passthrough's), never a client's model.
pub const RESERVED_MODEL_PREFIX: char = '@';
/// The routing-table model of the providers with `"passthrough": true`; its path is `v1`.
pub const PASSTHROUGH_MODEL: &str = "@passthrough";
pub const PASSTHROUGH_PATH: &str = "v1";
/// The config key naming the families a provider serves.
pub const FAMILIES_KEY: &str = "families";

/// OpenAI's limit for one file of `/v1/files`.
pub const MAX_FILE_BYTES: u64 = 512 * 1024 * 1024;
/// OpenAI's limit for one part of an upload (`/v1/uploads/{id}/parts`).
pub const MAX_UPLOAD_PART_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Files,
    Uploads,
    Batches,
    VectorStores,
    Containers,
    Conversations,
    Assistants,
    Threads,
    FineTuning,
    Evals,
    Videos,
    AudioVoices,
    /// Stored chat completions (`store: true`): list, retrieve, update, delete, messages.
    ChatCompletions,
}

impl Family {
    pub const ALL: &'static [Family] = &[
        Self::Files,
        Self::Uploads,
        Self::Batches,
        Self::VectorStores,
        Self::Containers,
        Self::Conversations,
        Self::Assistants,
        Self::Threads,
        Self::FineTuning,
        Self::Evals,
        Self::Videos,
        Self::AudioVoices,
        Self::ChatCompletions,
    ];

    /// The name in a provider's `"families"` list.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Files => "files",
            Self::Uploads => "uploads",
            Self::Batches => "batches",
            Self::VectorStores => "vector_stores",
            Self::Containers => "containers",
            Self::Conversations => "conversations",
            Self::Assistants => "assistants",
            Self::Threads => "threads",
            Self::FineTuning => "fine_tuning",
            Self::Evals => "evals",
            Self::Videos => "videos",
            Self::AudioVoices => "audio_voices",
            Self::ChatCompletions => "chat_completions",
        }
    }

    /// The family's base path: its endpoint's path, under which every one of its routes lies.
    pub const fn path(self) -> &'static str {
        match self {
            Self::Files => "v1/files",
            Self::Uploads => "v1/uploads",
            Self::Batches => "v1/batches",
            Self::VectorStores => "v1/vector_stores",
            Self::Containers => "v1/containers",
            Self::Conversations => "v1/conversations",
            Self::Assistants => "v1/assistants",
            Self::Threads => "v1/threads",
            Self::FineTuning => "v1/fine_tuning",
            Self::Evals => "v1/evals",
            Self::Videos => "v1/videos",
            Self::AudioVoices => "v1/audio/voices",
            Self::ChatCompletions => "v1/chat/completions",
        }
    }

    /// The routing-table model whose endpoints serve the family (`@files`).
    pub const fn table_model(self) -> &'static str {
        match self {
            Self::Files => "@files",
            Self::Uploads => "@uploads",
            Self::Batches => "@batches",
            Self::VectorStores => "@vector_stores",
            Self::Containers => "@containers",
            Self::Conversations => "@conversations",
            Self::Assistants => "@assistants",
            Self::Threads => "@threads",
            Self::FineTuning => "@fine_tuning",
            Self::Evals => "@evals",
            Self::Videos => "@videos",
            Self::AudioVoices => "@audio_voices",
            Self::ChatCompletions => "@chat_completions",
        }
    }

    pub fn named(name: &str) -> Option<Family> {
        Self::ALL
            .iter()
            .copied()
            .find(|family| family.name() == name)
    }
}

/// How a family route's body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FamilyBody {
    /// Read whole, up to `--max-body-bytes` (JSON, or nothing): the ids and `model` it names
    /// can route it.
    Json,
    /// Streamed to the upstream as it arrives, never held whole: at most this many bytes
    /// (0: `--max-upload-bytes`).
    Stream(u64),
}

/// One method and path of a family: an `Operation`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FamilyRoute {
    pub family: Family,
    pub method: &'static str,
    /// As config files and logs name paths: no leading slash, `{name}` for each id.
    pub path: &'static str,
    pub body: FamilyBody,
    /// Top-level members of a JSON body holding ids the request works on (a string or an array
    /// of strings): a creation goes where those objects live.
    pub references: &'static [&'static str],
}

const fn route(family: Family, method: &'static str, path: &'static str) -> FamilyRoute {
    FamilyRoute {
        family,
        method,
        path,
        body: FamilyBody::Json,
        references: &[],
    }
}

const fn streamed(
    family: Family,
    method: &'static str,
    path: &'static str,
    limit: u64,
) -> FamilyRoute {
    FamilyRoute {
        family,
        method,
        path,
        body: FamilyBody::Stream(limit),
        references: &[],
    }
}

const fn referencing(
    family: Family,
    path: &'static str,
    references: &'static [&'static str],
) -> FamilyRoute {
    FamilyRoute {
        family,
        method: "POST",
        path,
        body: FamilyBody::Json,
        references,
    }
}

use Family::*;

/// Every route of every family, as OpenAI's API reference lists them.
pub static FAMILY_ROUTES: &[FamilyRoute] = &[
    streamed(Files, "POST", "v1/files", MAX_FILE_BYTES),
    route(Files, "GET", "v1/files"),
    route(Files, "GET", "v1/files/{file_id}"),
    route(Files, "DELETE", "v1/files/{file_id}"),
    route(Files, "GET", "v1/files/{file_id}/content"),
    route(Uploads, "POST", "v1/uploads"),
    streamed(
        Uploads,
        "POST",
        "v1/uploads/{upload_id}/parts",
        MAX_UPLOAD_PART_BYTES,
    ),
    route(Uploads, "POST", "v1/uploads/{upload_id}/complete"),
    route(Uploads, "POST", "v1/uploads/{upload_id}/cancel"),
    referencing(Batches, "v1/batches", &["input_file_id"]),
    route(Batches, "GET", "v1/batches"),
    route(Batches, "GET", "v1/batches/{batch_id}"),
    route(Batches, "POST", "v1/batches/{batch_id}/cancel"),
    referencing(VectorStores, "v1/vector_stores", &["file_ids"]),
    route(VectorStores, "GET", "v1/vector_stores"),
    route(VectorStores, "GET", "v1/vector_stores/{vector_store_id}"),
    route(VectorStores, "POST", "v1/vector_stores/{vector_store_id}"),
    route(VectorStores, "DELETE", "v1/vector_stores/{vector_store_id}"),
    route(
        VectorStores,
        "POST",
        "v1/vector_stores/{vector_store_id}/search",
    ),
    route(
        VectorStores,
        "GET",
        "v1/vector_stores/{vector_store_id}/files",
    ),
    route(
        VectorStores,
        "POST",
        "v1/vector_stores/{vector_store_id}/files",
    ),
    route(
        VectorStores,
        "GET",
        "v1/vector_stores/{vector_store_id}/files/{file_id}",
    ),
    route(
        VectorStores,
        "POST",
        "v1/vector_stores/{vector_store_id}/files/{file_id}",
    ),
    route(
        VectorStores,
        "DELETE",
        "v1/vector_stores/{vector_store_id}/files/{file_id}",
    ),
    route(
        VectorStores,
        "GET",
        "v1/vector_stores/{vector_store_id}/files/{file_id}/content",
    ),
    route(
        VectorStores,
        "POST",
        "v1/vector_stores/{vector_store_id}/file_batches",
    ),
    route(
        VectorStores,
        "GET",
        "v1/vector_stores/{vector_store_id}/file_batches/{batch_id}",
    ),
    route(
        VectorStores,
        "POST",
        "v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel",
    ),
    route(
        VectorStores,
        "GET",
        "v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/files",
    ),
    referencing(Containers, "v1/containers", &["file_ids"]),
    route(Containers, "GET", "v1/containers"),
    route(Containers, "GET", "v1/containers/{container_id}"),
    route(Containers, "DELETE", "v1/containers/{container_id}"),
    streamed(Containers, "POST", "v1/containers/{container_id}/files", 0),
    route(Containers, "GET", "v1/containers/{container_id}/files"),
    route(
        Containers,
        "GET",
        "v1/containers/{container_id}/files/{file_id}",
    ),
    route(
        Containers,
        "DELETE",
        "v1/containers/{container_id}/files/{file_id}",
    ),
    route(
        Containers,
        "GET",
        "v1/containers/{container_id}/files/{file_id}/content",
    ),
    route(Conversations, "POST", "v1/conversations"),
    route(Conversations, "GET", "v1/conversations/{conversation_id}"),
    route(Conversations, "POST", "v1/conversations/{conversation_id}"),
    route(
        Conversations,
        "DELETE",
        "v1/conversations/{conversation_id}",
    ),
    route(
        Conversations,
        "GET",
        "v1/conversations/{conversation_id}/items",
    ),
    route(
        Conversations,
        "POST",
        "v1/conversations/{conversation_id}/items",
    ),
    route(
        Conversations,
        "GET",
        "v1/conversations/{conversation_id}/items/{item_id}",
    ),
    route(
        Conversations,
        "DELETE",
        "v1/conversations/{conversation_id}/items/{item_id}",
    ),
    route(Assistants, "POST", "v1/assistants"),
    route(Assistants, "GET", "v1/assistants"),
    route(Assistants, "GET", "v1/assistants/{assistant_id}"),
    route(Assistants, "POST", "v1/assistants/{assistant_id}"),
    route(Assistants, "DELETE", "v1/assistants/{assistant_id}"),
    route(Threads, "POST", "v1/threads"),
    referencing(Threads, "v1/threads/runs", &["assistant_id"]),
    route(Threads, "GET", "v1/threads/{thread_id}"),
    route(Threads, "POST", "v1/threads/{thread_id}"),
    route(Threads, "DELETE", "v1/threads/{thread_id}"),
    route(Threads, "GET", "v1/threads/{thread_id}/messages"),
    route(Threads, "POST", "v1/threads/{thread_id}/messages"),
    route(
        Threads,
        "GET",
        "v1/threads/{thread_id}/messages/{message_id}",
    ),
    route(
        Threads,
        "POST",
        "v1/threads/{thread_id}/messages/{message_id}",
    ),
    route(
        Threads,
        "DELETE",
        "v1/threads/{thread_id}/messages/{message_id}",
    ),
    route(Threads, "GET", "v1/threads/{thread_id}/runs"),
    route(Threads, "POST", "v1/threads/{thread_id}/runs"),
    route(Threads, "GET", "v1/threads/{thread_id}/runs/{run_id}"),
    route(Threads, "POST", "v1/threads/{thread_id}/runs/{run_id}"),
    route(
        Threads,
        "POST",
        "v1/threads/{thread_id}/runs/{run_id}/cancel",
    ),
    route(
        Threads,
        "POST",
        "v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs",
    ),
    route(Threads, "GET", "v1/threads/{thread_id}/runs/{run_id}/steps"),
    route(
        Threads,
        "GET",
        "v1/threads/{thread_id}/runs/{run_id}/steps/{step_id}",
    ),
    referencing(
        FineTuning,
        "v1/fine_tuning/jobs",
        &["training_file", "validation_file"],
    ),
    route(FineTuning, "GET", "v1/fine_tuning/jobs"),
    route(
        FineTuning,
        "GET",
        "v1/fine_tuning/jobs/{fine_tuning_job_id}",
    ),
    route(
        FineTuning,
        "POST",
        "v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel",
    ),
    route(
        FineTuning,
        "POST",
        "v1/fine_tuning/jobs/{fine_tuning_job_id}/pause",
    ),
    route(
        FineTuning,
        "POST",
        "v1/fine_tuning/jobs/{fine_tuning_job_id}/resume",
    ),
    route(
        FineTuning,
        "GET",
        "v1/fine_tuning/jobs/{fine_tuning_job_id}/events",
    ),
    route(
        FineTuning,
        "GET",
        "v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
    ),
    route(
        FineTuning,
        "GET",
        "v1/fine_tuning/checkpoints/{checkpoint}/permissions",
    ),
    route(
        FineTuning,
        "POST",
        "v1/fine_tuning/checkpoints/{checkpoint}/permissions",
    ),
    route(
        FineTuning,
        "DELETE",
        "v1/fine_tuning/checkpoints/{checkpoint}/permissions/{permission_id}",
    ),
    route(FineTuning, "POST", "v1/fine_tuning/alpha/graders/run"),
    route(FineTuning, "POST", "v1/fine_tuning/alpha/graders/validate"),
    route(Evals, "POST", "v1/evals"),
    route(Evals, "GET", "v1/evals"),
    route(Evals, "GET", "v1/evals/{eval_id}"),
    route(Evals, "POST", "v1/evals/{eval_id}"),
    route(Evals, "DELETE", "v1/evals/{eval_id}"),
    route(Evals, "GET", "v1/evals/{eval_id}/runs"),
    route(Evals, "POST", "v1/evals/{eval_id}/runs"),
    route(Evals, "GET", "v1/evals/{eval_id}/runs/{run_id}"),
    route(Evals, "POST", "v1/evals/{eval_id}/runs/{run_id}"),
    route(Evals, "DELETE", "v1/evals/{eval_id}/runs/{run_id}"),
    route(
        Evals,
        "GET",
        "v1/evals/{eval_id}/runs/{run_id}/output_items",
    ),
    route(
        Evals,
        "GET",
        "v1/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}",
    ),
    streamed(Videos, "POST", "v1/videos", 0),
    route(Videos, "GET", "v1/videos"),
    route(Videos, "GET", "v1/videos/{video_id}"),
    route(Videos, "DELETE", "v1/videos/{video_id}"),
    route(Videos, "GET", "v1/videos/{video_id}/content"),
    route(Videos, "POST", "v1/videos/{video_id}/remix"),
    streamed(AudioVoices, "POST", "v1/audio/voices", 0),
    route(AudioVoices, "GET", "v1/audio/voices"),
    route(AudioVoices, "GET", "v1/audio/voices/{voice_id}"),
    route(AudioVoices, "DELETE", "v1/audio/voices/{voice_id}"),
    route(ChatCompletions, "GET", "v1/chat/completions"),
    route(
        ChatCompletions,
        "GET",
        "v1/chat/completions/{completion_id}",
    ),
    route(
        ChatCompletions,
        "POST",
        "v1/chat/completions/{completion_id}",
    ),
    route(
        ChatCompletions,
        "DELETE",
        "v1/chat/completions/{completion_id}",
    ),
    route(
        ChatCompletions,
        "GET",
        "v1/chat/completions/{completion_id}/messages",
    ),
];

impl FamilyRoute {
    /// The names of the ids in the path, in order (`["vector_store_id", "file_id"]`).
    pub fn id_names(&self) -> impl Iterator<Item = &'static str> {
        self.path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_route_lies_under_its_family_and_appears_once() {
        let mut seen = HashSet::new();
        for route in FAMILY_ROUTES {
            let base = route.family.path();
            assert!(
                route.path == base || route.path.starts_with(&format!("{base}/")),
                "{route:?}"
            );
            assert!(seen.insert((route.method, route.path)), "{route:?}");
        }
        for family in Family::ALL {
            assert_eq!(Family::named(family.name()), Some(*family));
            assert_eq!(family.table_model(), format!("@{}", family.name()));
            assert!(FAMILY_ROUTES.iter().any(|r| r.family == *family));
        }
        let route = FAMILY_ROUTES
            .iter()
            .find(|r| r.path == "v1/vector_stores/{vector_store_id}/files/{file_id}")
            .unwrap();
        assert_eq!(
            route.id_names().collect::<Vec<_>>(),
            ["vector_store_id", "file_id"]
        );
    }
}
