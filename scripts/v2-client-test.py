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
    args = args.parse_args()
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


if __name__ == "__main__":
    main()
