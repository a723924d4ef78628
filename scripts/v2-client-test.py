"""The server's Open Inference Protocol (/v2) driven by Triton's own client, tritonclient[http].

Run by scripts/v2-client-test (which makes the virtual environment) from
crates/server/tests/v2.rs, against the real server binary:

    python v2-client-test.py --url 127.0.0.1:8000 --dir DIR

DIR holds CIFAR-10 images (*.jpg) and pixels.f32, the same images preprocessed by the model crate
(N x 3 x 64 x 64 little-endian floats, in the sorted order of the file names). Every answer is
checked against what /classify answers for the same image. Exits non-zero on the first failure.
"""

import argparse
import base64
import json
import pathlib
import threading
import time
import urllib.request

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

MODEL = "cifar10-cnn"
TOLERANCE = 1e-5


def fetch(url, body=None, content_type=None):
    request = urllib.request.Request(url, data=body)
    if content_type:
        request.add_header("Content-Type", content_type)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def check_probabilities(probs, answers):
    """Each row agrees with /classify: its best class and the top-3 confidences by index."""
    assert probs.shape == (len(answers), 10) and probs.dtype == np.float32, probs.shape
    for row, answer in zip(probs, answers):
        for entry in answer["top_3_predictions"]:
            got = row[entry["class_index"]]
            assert abs(got - entry["confidence"]) < TOLERANCE, (got, answer)
        assert abs(row.max() - answer["prediction"]["confidence"]) < TOLERANCE, (row, answer)


def check_top3(top, answers, classes, probs):
    """The classification extension's "<value>:<index>:<label>" agree with /classify's top 3."""
    assert top.shape == (len(answers), 3), top.shape
    for row, answer, p in zip(top, answers, probs):
        for entry, want in zip(row, answer["top_3_predictions"]):
            value, index, label = text(entry).split(":")
            value, index = float(value), int(index)
            assert label == classes[index], entry
            assert abs(value - want["confidence"]) < TOLERANCE, (entry, want)
            assert abs(value - p[index]) < TOLERANCE, (entry, p)


def text(element):
    """A BYTES element as text: bytes from binary data, str from JSON."""
    return element.decode() if isinstance(element, bytes) else element


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def refused(call, status, says):
    try:
        call()
    except InferenceServerException as e:
        assert e.status() == status, (e.status(), e.message())
        assert says in e.message(), e.message()
        return
    raise AssertionError(f"not refused; expected {status} saying {says!r}")


def main():
    args = argparse.ArgumentParser()
    args.add_argument("--url", required=True, help="host:port of the server")
    args.add_argument("--dir", required=True, type=pathlib.Path)
    args.add_argument(
        "--grpc-url",
        help="host:port of the server's gRPC listener: check the protocol over gRPC instead "
        "(the server started with --max-batch 20 --max-images 40 --max-files 40 "
        "--max-wait-ms 3000 --max-body 2000000)",
    )
    args = args.parse_args()
    if args.grpc_url:
        grpc_checks(args)
        return
    base = f"http://{args.url}"

    client = httpclient.InferenceServerClient(url=args.url)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    server = client.get_server_metadata()
    assert {"classification", "binary_tensor_data"} <= set(server["extensions"]), server
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL, meta
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        ("image", "BYTES"),
        ("input", "FP32"),
    ], meta
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities"], meta
    version = meta["versions"][0]
    assert client.is_model_ready(MODEL, model_version=version)

    files = sorted(args.dir.glob("*.jpg"))
    blobs = [f.read_bytes() for f in files]
    n = len(blobs)
    pixels = np.fromfile(args.dir / "pixels.f32", dtype="<f4").reshape(n, 3, 64, 64)
    classes = fetch(f"{base}/classes")["classes"]
    answers = [fetch(f"{base}/classify", blob, "image/jpeg") for blob in blobs]

    # BYTES images, binary tensor data (the client's default), no outputs named: both, binary.
    images = httpclient.InferInput("image", [n], "BYTES")
    images.set_data_from_numpy(np.array(blobs, dtype=np.object_))
    result = client.infer(MODEL, [images])
    probs = result.as_numpy("probabilities")
    logits = result.as_numpy("logits")
    check_probabilities(probs, answers)
    assert logits.shape == (n, 10) and logits.dtype == np.float32
    assert np.abs(softmax(logits.astype(np.float64)) - probs).max() < TOLERANCE

    # FP32 tensors, binary in, one output binary and one in JSON, on the versioned path.
    tensor = httpclient.InferInput("input", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    result = client.infer(
        MODEL,
        [tensor],
        model_version=version,
        request_id="py-1",
        outputs=[
            httpclient.InferRequestedOutput("probabilities"),
            httpclient.InferRequestedOutput("logits", binary_data=False),
        ],
    )
    assert result.get_response()["id"] == "py-1"
    assert result.get_response()["model_version"] == version
    check_probabilities(result.as_numpy("probabilities"), answers)
    assert np.abs(result.as_numpy("logits") - logits).max() < 1e-4

    # Classification top 3 (binary), images as [N, 1].
    images = httpclient.InferInput("image", [n, 1], "BYTES")
    images.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(n, 1))
    result = client.infer(
        MODEL,
        [images],
        outputs=[httpclient.InferRequestedOutput("probabilities", class_count=3)],
    )
    check_top3(result.as_numpy("probabilities"), answers, classes, probs)

    # JSON tensor data both ways: FP32 numbers, and BYTES as base64 strings.
    tensor = httpclient.InferInput("input", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=False)
    result = client.infer(
        MODEL,
        [tensor],
        outputs=[
            httpclient.InferRequestedOutput("probabilities", binary_data=False),
            httpclient.InferRequestedOutput("logits", binary_data=False, class_count=1),
        ],
    )
    check_probabilities(result.as_numpy("probabilities"), answers)
    best = [int(text(row[0]).split(":")[1]) for row in result.as_numpy("logits")]
    assert best == [int(np.argmax(row)) for row in logits], best
    encoded = np.array([base64.b64encode(blob) for blob in blobs], dtype=np.object_)
    images = httpclient.InferInput("image", [n], "BYTES")
    images.set_data_from_numpy(encoded, binary_data=False)
    result = client.infer(
        MODEL,
        [images],
        outputs=[
            httpclient.InferRequestedOutput("probabilities", binary_data=False, class_count=3)
        ],
    )
    check_top3(result.as_numpy("probabilities"), answers, classes, probs)

    # Errors come back as the client's exception, with the protocol's status and message.
    refused(lambda: client.infer("resnet50", [images]), "404", "unknown model")
    refused(lambda: client.get_model_metadata("resnet50"), "404", "unknown model")
    bad = httpclient.InferInput("image", [2], "BYTES")
    bad.set_data_from_numpy(np.array([blobs[0], b"not an image"], dtype=np.object_))
    refused(lambda: client.infer(MODEL, [bad]), "400", "element 1")
    wrong = httpclient.InferInput("input", [1, 3, 32, 32], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 32, 32), dtype=np.float32))
    refused(lambda: client.infer(MODEL, [wrong]), "400", "[N, 3, 64, 64]")
    refused(
        lambda: client.infer(
            MODEL, [images], outputs=[httpclient.InferRequestedOutput("features")]
        ),
        "400",
        "unknown output",
    )
    client.close()
    print(f"ok: {n} images through tritonclient agree with /classify")


def grpc_checks(args):
    """The protocol over gRPC with tritonclient[grpc]: health, metadata, configuration,
    statistics, BYTES and FP32 inference agreeing with /classify, errors as gRPC codes, an
    overload answer, a message over --max-body, and one batch of HTTP and gRPC requests."""
    import grpc
    import tritonclient.grpc as grpcclient
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    base = f"http://{args.url}"
    files = sorted(args.dir.glob("*.jpg"))
    blobs = [f.read_bytes() for f in files]
    n = len(blobs)
    assert n == 20, n
    pixels = np.fromfile(args.dir / "pixels.f32", dtype="<f4").reshape(n, 3, 64, 64)
    classes = fetch(f"{base}/classes")["classes"]
    # One /classify/batch of all 20 (a full --max-batch, so it waits for nobody).
    boundary = "cifar-cnn-boundary"
    form = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{f.name}"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode() + blob + b"\r\n"
        for f, blob in zip(files, blobs)
    ) + f"--{boundary}--\r\n".encode()
    batch = fetch(f"{base}/classify/batch", form, f"multipart/form-data; boundary={boundary}")
    answers = batch["results"]
    assert len(answers) == n and all("prediction" in a for a in answers), batch

    # The standard health service, as a Kubernetes grpc: probe asks it (it follows readiness
    # within 100 ms).
    with grpc.insecure_channel(args.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", "inference.GRPCInferenceService"]:
            for _ in range(100):
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    break
                time.sleep(0.02)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, (service, answer)

    client = grpcclient.InferenceServerClient(url=args.grpc_url)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    server = client.get_server_metadata(as_json=True)
    assert {"classification", "binary_tensor_data", "model_configuration", "statistics"} <= set(
        server["extensions"]
    ), server
    meta = client.get_model_metadata(MODEL, as_json=True)
    assert meta["name"] == MODEL, meta
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        ("image", "BYTES"),
        ("input", "FP32"),
    ], meta
    version = meta["versions"][0]
    assert version == fetch(f"{base}/v2/models/{MODEL}")["versions"][0]
    assert client.is_model_ready(MODEL, model_version=version)

    # The model configuration, over gRPC and HTTP alike.
    config = client.get_model_config(MODEL, as_json=True)["config"]
    assert config["name"] == MODEL and config["max_batch_size"] == 40, config
    inputs = {i["name"]: i for i in config["input"]}
    assert inputs["image"]["data_type"] == "TYPE_STRING" and inputs["image"]["optional"], config
    assert inputs["input"]["data_type"] == "TYPE_FP32", config
    assert [int(d) for d in inputs["input"]["dims"]] == [3, 64, 64], config
    assert [o["name"] for o in config["output"]] == ["logits", "probabilities"], config
    assert config["dynamic_batching"]["preferred_batch_size"] == [20], config
    over_http = fetch(f"{base}/v2/models/{MODEL}/config")
    assert over_http["input"][1]["dims"] == [3, 64, 64], over_http
    assert over_http["max_batch_size"] == 40 and over_http["name"] == MODEL, over_http

    # BYTES images in raw_input_contents, both outputs back raw.
    images = grpcclient.InferInput("image", [n], "BYTES")
    images.set_data_from_numpy(np.array(blobs, dtype=np.object_))
    result = client.infer(MODEL, [images], request_id="grpc-1")
    assert result.get_response().id == "grpc-1"
    assert result.get_response().model_version == version
    probs = result.as_numpy("probabilities")
    logits = result.as_numpy("logits")
    check_probabilities(probs, answers)
    assert np.abs(softmax(logits.astype(np.float64)) - probs).max() < TOLERANCE

    # FP32 tensors, on the version asked for, one output, and a classification.
    tensor = grpcclient.InferInput("input", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    result = client.infer(
        MODEL,
        [tensor],
        model_version=version,
        outputs=[grpcclient.InferRequestedOutput("probabilities")],
    )
    check_probabilities(result.as_numpy("probabilities"), answers)
    images = grpcclient.InferInput("image", [n, 1], "BYTES")
    images.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(n, 1))
    result = client.infer(
        MODEL, [images], outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=3)]
    )
    check_top3(result.as_numpy("probabilities"), answers, classes, probs)

    # Errors as gRPC codes, with the protocol's words.
    refused(lambda: client.infer("resnet50", [images]), "StatusCode.NOT_FOUND", "unknown model")
    refused(lambda: client.get_model_config("resnet50"), "StatusCode.NOT_FOUND", "unknown model")
    refused(
        lambda: client.infer(MODEL, [images], model_version="7"),
        "StatusCode.NOT_FOUND",
        "unknown version",
    )
    bad = grpcclient.InferInput("image", [2], "BYTES")
    bad.set_data_from_numpy(np.array([blobs[0], b"not an image"], dtype=np.object_))
    refused(lambda: client.infer(MODEL, [bad]), "StatusCode.INVALID_ARGUMENT", "element 1")
    wrong = grpcclient.InferInput("input", [1, 3, 32, 32], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 32, 32), dtype=np.float32))
    refused(lambda: client.infer(MODEL, [wrong]), "StatusCode.INVALID_ARGUMENT", "[N, 3, 64, 64]")
    # A message over --max-body (2,000,000 bytes) is refused before it reaches the model.
    huge = grpcclient.InferInput("image", [1], "BYTES")
    huge.set_data_from_numpy(np.array([b"x" * 2_100_000], dtype=np.object_))
    refused(lambda: client.infer(MODEL, [huge]), "StatusCode.RESOURCE_EXHAUSTED", "too large")

    # One batch of a gRPC request and an HTTP one: 10 + 10 images fill --max-batch 20, the
    # first waiting up to --max-wait-ms for the second.
    half = n // 2
    images = grpcclient.InferInput("image", [half], "BYTES")
    images.set_data_from_numpy(np.array(blobs[:half], dtype=np.object_))
    done, answered = threading.Event(), {}

    def callback(result, error):
        answered["result"], answered["error"] = result, error
        done.set()

    before = fetch(f"{base}/v2/models/{MODEL}/stats")["model_stats"][0]
    client.async_infer(MODEL, [images], callback)
    http_client = httpclient.InferenceServerClient(url=args.url)
    http_images = httpclient.InferInput("image", [n - half], "BYTES")
    http_images.set_data_from_numpy(np.array(blobs[half:], dtype=np.object_))
    http_result = http_client.infer(MODEL, [http_images])
    assert done.wait(30) and answered["error"] is None, answered
    grpc_probs = answered["result"].as_numpy("probabilities")
    check_probabilities(
        np.concatenate([grpc_probs, http_result.as_numpy("probabilities")]), answers
    )
    after = fetch(f"{base}/v2/models/{MODEL}/stats")["model_stats"][0]
    assert after["execution_count"] == before["execution_count"] + 1, (before, after)
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    assert sizes.get(20, 0) >= 1, after
    stats = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) == after["inference_count"], (stats, after)

    # Overload: 10 images wait for their batch, holding 10 of --max-images 40 permits; a
    # request of 40 finds only 30 free and is refused at once, UNAVAILABLE with a retry hint.
    done.clear()
    client.async_infer(MODEL, [images], callback)
    full = grpcclient.InferInput("image", [40], "BYTES")
    full.set_data_from_numpy(np.array((blobs * 2)[:40], dtype=np.object_))
    refused(lambda: client.infer(MODEL, [full]), "StatusCode.UNAVAILABLE", "capacity")
    assert done.wait(30) and answered["error"] is None, answered
    client.close()
    http_client.close()
    print(f"ok: {n} images through tritonclient[grpc] agree with /classify")


if __name__ == "__main__":
    main()
