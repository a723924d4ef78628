//! The `model_configuration` and `statistics` extensions: what the model takes, gives and how
//! it batches (Triton's model configuration, which `tritonclient` and `perf_analyzer` read
//! before anything else), and what it has done. Each is built once here as the gRPC message
//! ([`super::proto`]) and printed as Triton's JSON for `GET /v2/models/{name}/config` and
//! `/stats`.

use actix_web::{HttpRequest, HttpResponse, web};
use model::{INPUT_SIZE, NUM_CLASSES};
use serde_json::{Value, json};

use super::metadata::{check_name, served, served_as};
use super::proto::{self, DataType, model_input::Format};
use super::types::{ModelName, ModelProblems, ModelVersion};
use super::{CHANNELS, IMAGE_INPUT, LOGITS, PLATFORM, PROBABILITIES, TENSOR_INPUT, V2Error};
use crate::AppState;
use crate::inference::stats::{BatchSteps, Duration64};

/// The model's configuration, in Triton's terms: up to `--max-files` images a request (the
/// batch dimension left out of `dims`), either input optional (a request sends exactly one),
/// and the engine's dynamic batching.
pub(super) fn config(state: &AppState) -> proto::ModelConfig {
    let input = |name: &str, data_type: DataType, format: Format, dims: &[i64]| proto::ModelInput {
        name: name.into(),
        data_type: data_type.into(),
        format: format.into(),
        dims: dims.to_vec(),
        optional: true,
        ..Default::default()
    };
    let output = |name: &str| proto::ModelOutput {
        name: name.into(),
        data_type: DataType::TypeFp32.into(),
        dims: vec![NUM_CLASSES as i64],
        ..Default::default()
    };
    let side = INPUT_SIZE as i64;
    let batch = &state.config.batch;
    proto::ModelConfig {
        name: state.config.model_name.clone(),
        platform: PLATFORM.into(),
        version_policy: Some(proto::ModelVersionPolicy {
            policy_choice: Some(proto::model_version_policy::PolicyChoice::Latest(
                proto::model_version_policy::Latest { num_versions: 1 },
            )),
        }),
        max_batch_size: i32::try_from(state.config.upload.files).unwrap_or(i32::MAX),
        input: vec![
            input(IMAGE_INPUT, DataType::TypeString, Format::None, &[1]),
            input(
                TENSOR_INPUT,
                DataType::TypeFp32,
                Format::Nchw,
                &[CHANNELS as i64, side, side],
            ),
        ],
        output: vec![output(LOGITS), output(PROBABILITIES)],
        instance_group: vec![proto::ModelInstanceGroup {
            name: state.config.model_name.clone(),
            count: 1,
            kind: proto::model_instance_group::Kind::Cpu.into(),
            ..Default::default()
        }],
        dynamic_batching: Some(proto::ModelDynamicBatching {
            preferred_batch_size: vec![i32::try_from(batch.max_batch).unwrap_or(i32::MAX)],
            max_queue_delay_microseconds: batch.max_wait.as_micros() as u64,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `config` as Triton prints it over HTTP: field names as in the proto, enums by name, dims
/// as numbers, every field of a message given (Triton's `always_print_primitive_fields`).
pub(super) fn config_json(config: &proto::ModelConfig) -> Value {
    let name = |d: i32| DataType::try_from(d).map_or("TYPE_INVALID", |d| d.as_str_name());
    let batching = config.dynamic_batching.clone().unwrap_or_default();
    json!({
        "name": config.name,
        "platform": config.platform,
        "backend": config.backend,
        "runtime": config.runtime,
        "version_policy": match config.version_policy.as_ref().and_then(|p| p.policy_choice.as_ref()) {
            Some(proto::model_version_policy::PolicyChoice::Latest(latest)) => {
                json!({"latest": {"num_versions": latest.num_versions}})
            }
            _ => json!({"all": {}}),
        },
        "max_batch_size": config.max_batch_size,
        "input": config.input.iter().map(|i| json!({
            "name": i.name,
            "data_type": name(i.data_type),
            "format": Format::try_from(i.format).map_or("FORMAT_NONE", |f| f.as_str_name()),
            "dims": i.dims,
            "is_shape_tensor": i.is_shape_tensor,
            "allow_ragged_batch": i.allow_ragged_batch,
            "optional": i.optional,
        })).collect::<Vec<_>>(),
        "output": config.output.iter().map(|o| json!({
            "name": o.name,
            "data_type": name(o.data_type),
            "dims": o.dims,
            "label_filename": o.label_filename,
            "is_shape_tensor": o.is_shape_tensor,
        })).collect::<Vec<_>>(),
        "instance_group": config.instance_group.iter().map(|g| json!({
            "name": g.name,
            "kind": proto::model_instance_group::Kind::try_from(g.kind)
                .map_or("KIND_AUTO", |k| k.as_str_name()),
            "count": g.count,
            "gpus": g.gpus,
            "profile": g.profile,
            "passive": g.passive,
            "host_policy": g.host_policy,
        })).collect::<Vec<_>>(),
        "dynamic_batching": {
            "preferred_batch_size": batching.preferred_batch_size,
            "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
            "preserve_ordering": batching.preserve_ordering,
            "priority_levels": batching.priority_levels,
            "default_priority_level": batching.default_priority_level,
        },
        "default_model_filename": config.default_model_filename,
        "parameters": {},
    })
}

/// The model's statistics at `version` (the one served now).
pub(super) fn statistics(state: &AppState, version: String) -> proto::ModelStatistics {
    let s = state.engine.statistics().snapshot();
    let d = |d: Duration64| {
        Some(proto::StatisticDuration {
            count: d.count,
            ns: d.ns,
        })
    };
    let zero = d(Duration64::default());
    proto::ModelStatistics {
        name: state.config.model_name.clone(),
        version,
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(proto::InferStatistics {
            success: d(s.success),
            fail: d(s.fail),
            queue: d(s.queue),
            compute_input: d(s.compute.input),
            compute_infer: d(s.compute.infer),
            compute_output: d(s.compute.output),
            cache_hit: zero,
            cache_miss: zero,
        }),
        batch_stats: s
            .batches
            .iter()
            .map(
                |(&size, steps): (&u64, &BatchSteps)| proto::InferBatchStatistics {
                    batch_size: size,
                    compute_input: d(steps.input),
                    compute_infer: d(steps.infer),
                    compute_output: d(steps.output),
                },
            )
            .collect(),
    }
}

/// `stats` as Triton prints them over HTTP: `{"model_stats": [...]}`, every count a number.
pub(super) fn statistics_json(stats: &[proto::ModelStatistics]) -> Value {
    let d = |d: Option<proto::StatisticDuration>| {
        let d = d.unwrap_or_default();
        json!({"count": d.count, "ns": d.ns})
    };
    let model = |m: &proto::ModelStatistics| {
        let i = m.inference_stats.unwrap_or_default();
        json!({
            "name": m.name,
            "version": m.version,
            "last_inference": m.last_inference,
            "inference_count": m.inference_count,
            "execution_count": m.execution_count,
            "inference_stats": {
                "success": d(i.success),
                "fail": d(i.fail),
                "queue": d(i.queue),
                "compute_input": d(i.compute_input),
                "compute_infer": d(i.compute_infer),
                "compute_output": d(i.compute_output),
                "cache_hit": d(i.cache_hit),
                "cache_miss": d(i.cache_miss),
            },
            "batch_stats": m.batch_stats.iter().map(|b| json!({
                "batch_size": b.batch_size,
                "compute_input": d(b.compute_input),
                "compute_infer": d(b.compute_infer),
                "compute_output": d(b.compute_output),
            })).collect::<Vec<_>>(),
        })
    };
    json!({ "model_stats": stats.iter().map(model).collect::<Vec<_>>() })
}

#[utoipa::path(get, path = "/v2/models/{name}/config", tag = "v2",
    params(("name" = ModelName, Path, description = "The model's name")),
    responses(
        (status = 200, description = "The model's configuration, in Triton's form (the model_configuration extension)", body = Object),
        ModelProblems,
    ))]
pub(super) async fn model_config(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, V2Error> {
    served(&state, &req)?;
    Ok(HttpResponse::Ok().json(config_json(&config(&state))))
}

#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/config", tag = "v2",
    params(
        ("name" = ModelName, Path, description = "The model's name"),
        ("version" = ModelVersion, Path, description = "The model's version"),
    ),
    responses(
        (status = 200, description = "The model's configuration, as for /v2/models/{name}/config", body = Object),
        ModelProblems,
    ))]
pub(super) async fn version_config(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, V2Error> {
    model_config(state, req).await
}

#[utoipa::path(get, path = "/v2/models/{name}/stats", tag = "v2",
    params(("name" = ModelName, Path, description = "The model's name")),
    responses(
        (status = 200, description = "What the model has done since the server started: requests answered and failed, time queued, time per batch size (the statistics extension, in Triton's form)", body = Object),
        ModelProblems,
    ))]
pub(super) async fn model_stats(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, V2Error> {
    let version = served(&state, &req)?;
    Ok(HttpResponse::Ok().json(statistics_json(&[statistics(&state, version)])))
}

#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/stats", tag = "v2",
    params(
        ("name" = ModelName, Path, description = "The model's name"),
        ("version" = ModelVersion, Path, description = "The model's version"),
    ),
    responses(
        (status = 200, description = "The model's statistics, as for /v2/models/{name}/stats", body = Object),
        ModelProblems,
    ))]
pub(super) async fn version_stats(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, V2Error> {
    model_stats(state, req).await
}

#[utoipa::path(get, path = "/v2/models/stats", tag = "v2",
    responses(
        (status = 200, description = "Every model's statistics (the one served)", body = Object),
    ))]
pub(super) async fn all_stats(state: web::Data<AppState>) -> Result<HttpResponse, V2Error> {
    let version = served_as(&state, &state.config.model_name, None)?;
    Ok(HttpResponse::Ok().json(statistics_json(&[statistics(&state, version)])))
}

/// Statistics for `name` (empty: every model) at `version` (empty: the one served), for gRPC.
pub(super) fn statistics_for(
    state: &AppState,
    name: &str,
    version: &str,
) -> Result<Vec<proto::ModelStatistics>, V2Error> {
    if !name.is_empty() {
        check_name(state, name)?;
    }
    let version = served_as(state, &state.config.model_name, Some(version))?;
    Ok(vec![statistics(state, version)])
}
