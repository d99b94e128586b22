"""Training: a tiny real run on the offline base, resume, QLoRA, eval CLI and bad input."""

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from .helpers import DEV_SAMPLE, TRAIN_SAMPLE, run_cli, write_json


def test_tiny_run_saves_a_loadable_adapter(tiny_adapter, dev_examples):
    files = {p.name for p in tiny_adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "qabridge.json", "training_summary.json"} <= files
    assert not (tiny_adapter / "checkpoint").exists()
    s = json.loads((tiny_adapter / "training_summary.json").read_text())
    assert s["steps"] == 3 and s["examples_seen"] == 12
    assert 0 < s["trainable_params"] < s["total_params"] / 10
    assert s["adapter_bytes"] < 3_000_000 and s["segment_ids"] == "zeros"
    cfg = json.loads((tiny_adapter / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"  # portable, not a site-packages path
    from qabridge.train.evaluate import torch_pipeline

    pred = torch_pipeline(tiny_adapter).predict(dev_examples[0].question, dev_examples[0].context)
    s0 = pred.spans[0]
    assert 0 <= s0.start < s0.end <= len(dev_examples[0].context)


def test_interrupted_training_resumes(tmp_path):
    out = tmp_path / "resume"
    args = ["train", "--data", str(TRAIN_SAMPLE), "--output", str(out), "--max-steps", "30", "--batch-size", "2",
            "--max-seq-len", "64", "--doc-stride", "16", "--lora-r", "2", "--checkpoint-every", "5", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "qabridge.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (out / "checkpoint" / "state.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "adapter_model.safetensors").exists()
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stderr
    s = json.loads((out / "training_summary.json").read_text())
    assert s["steps"] == 30


def test_eval_cli_json(tiny_adapter):
    r = run_cli("eval", "--adapter", str(tiny_adapter), "--data", str(DEV_SAMPLE), "--limit", "10", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["count"] == 10 and res["engine"] == "torch"
    assert 0 <= res["exact_match"] <= res["f1"] <= 100


def test_qlora_4bit_trains_or_fails_at_once(tmp_path):
    r = run_cli("train", "--data", str(TRAIN_SAMPLE), "--output", str(tmp_path / "q"), "--max-steps", "2",
                "--batch-size", "2", "--max-seq-len", "64", "--quantize", "4bit", "--quiet", "--device", "cpu")
    assert "Traceback" not in r.stderr
    import importlib.metadata

    try:
        bnb = tuple(int(x) for x in importlib.metadata.version("bitsandbytes").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        bnb = None
    if bnb is not None and bnb >= (0, 45):  # bitsandbytes with a CPU backend: QLoRA must train here
        assert r.returncode == 0, r.stderr[-2000:]
        s = json.loads((tmp_path / "q" / "training_summary.json").read_text())
        assert s["config"]["quantize"] == "4bit" and s["steps"] == 2
        assert s["total_params"] < 20_000_000  # 4-bit weights count as packed storage: fewer parameters
    else:
        assert r.returncode == 6 and "bitsandbytes" in r.stderr and "cpu" in r.stderr


def _squad(context, text, start):
    return {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": "Who?", "answers": [{"text": text, "answer_start": start}]}]}]}]}


@pytest.mark.parametrize(
    "case, needle, code",
    [  # exit codes by error class: 3 data, 4 model, 2 usage, 6 device
        ("missing", "no such file", 3),
        ("malformed", "not readable as SQuAD JSON", 3),
        ("bad_start", "does not point at its answer text", 3),  # with --strict
        ("no_usable", "holds no usable question", 3),
        ("unknown_base", "unknown base model", 4),
        ("not_bert", "not BERT-family", 4),
        ("bad_device", "not a torch device", 2),
        ("no_cuda", "sees no CUDA device", 6),
    ],
)
def test_bad_training_inputs(tmp_path, case, needle, code):
    data, base, extra = str(TRAIN_SAMPLE), None, []
    if case == "missing":
        data = str(tmp_path / "missing.json")
    elif case == "malformed":
        data = str(tmp_path / "m.json")
        (tmp_path / "m.json").write_text("{oops")
    elif case == "bad_start":
        data = str(write_json(tmp_path / "b.json", _squad("Alice met Bob.", "Bob", 1)))
        extra = ["--strict"]
    elif case == "no_usable":
        data = str(write_json(tmp_path / "n.json", _squad("Alice met Bob.", "Carol", 10)))
    elif case == "unknown_base":
        base = "no-such-org/no-such-model-qabridge"
    elif case == "not_bert":
        d = tmp_path / "gpt"
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        base = str(d)
    elif case == "bad_device":
        extra = ["--device", "gpu9"]
    elif case == "no_cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA device")
        extra = ["--device", "cuda"]
    out = tmp_path / "out"
    args = ["train", "--data", data, "--output", str(out), "--max-steps", "1", "--quiet", *extra]
    if base:
        args += ["--base", base]
    r = run_cli(*args)
    assert r.returncode == code, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    err_lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1
    assert not out.exists() or not any(out.iterdir())


def test_output_holding_a_different_adapter_is_left_alone(tiny_adapter, tmp_path):
    import shutil

    out = tmp_path / "existing"
    shutil.copytree(tiny_adapter, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = run_cli("train", "--data", str(TRAIN_SAMPLE), "--output", str(out), "--max-steps", "1", "--lora-r", "8", "--quiet")
    assert r.returncode == 5 and "different adapter" in r.stderr and "lora_r" in r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_help_describes_every_option():
    for cmd in ("train", "eval", "export", "serve", "ask"):
        r = run_cli(cmd, "--help")
        assert r.returncode == 0
        for line in r.stdout.splitlines():
            s = line.strip()
            if s.startswith("--") and "  " in s:
                assert len(s.split("  ", 1)[1].strip()) > 3, (cmd, s)
    r = run_cli("train", "--help")
    for opt in ("--base", "--data", "--eval-data", "--output", "--subset-size", "--epochs", "--max-steps", "--batch-size",
                "--grad-accum", "--lr", "--lora-r", "--lora-alpha", "--lora-dropout", "--target-modules", "--quantize",
                "--max-seq-len", "--doc-stride", "--seed", "--full"):
        assert opt in r.stdout, opt


def test_eval_report_breaks_down_by_type_and_length(exported, tmp_path):
    from qabridge.train.report import length_bucket, question_type

    assert question_type("How many teams played?") == "how many"
    assert question_type("In what year did it end?") == "what"
    assert question_type("Name the team.") == "other"
    assert length_bucket("word " * 120) == "100-149 words"
    rep = tmp_path / "r" / "report.md"
    r = run_cli("eval", "--model", str(exported("q8_0")), "--data", str(DEV_SAMPLE), "--limit", "40", "--report", str(rep), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    text = rep.read_text()
    assert "## By question type" in text and "## By context length" in text
    assert rep.with_suffix(".png").stat().st_size > 1000
    type_rows = text.split("## By question type")[1].split("## By context length")[0]
    counts = [int(line.split("|")[2]) for line in type_rows.splitlines() if line.startswith("| ") and not line.startswith("| type")]
    assert sum(counts) == res["count"] == 40


def test_warm_start_begins_from_the_adapter(tiny_adapter, tmp_path):
    """--init-adapter: the run starts from the adapter's weights (not a fresh LoRA) and takes its shape."""
    from safetensors.numpy import load_file

    out = tmp_path / "warm"
    # lr so small that one step cannot move a weight measurably: what is saved is where it started.
    r = run_cli("train", "--data", str(TRAIN_SAMPLE), "--output", str(out), "--init-adapter", str(tiny_adapter),
                "--max-steps", "1", "--batch-size", "2", "--max-seq-len", "128", "--doc-stride", "32",
                "--lr", "1e-12", "--checkpoint-every", "0", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "LoRA shape taken from the adapter" in r.stderr and "warm start from" in r.stderr
    before = load_file(str(tiny_adapter / "adapter_model.safetensors"))
    after = load_file(str(out / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    lora_b = [k for k in before if "lora_B" in k]
    assert lora_b and any(abs(before[k]).max() > 0 for k in lora_b)  # a fresh LoRA has B = 0: this one does not
    for k in before:
        assert abs(before[k] - after[k]).max() < 1e-6, k
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    ident = json.loads((out / "qabridge.json").read_text())["train_identity"]
    assert len(ident["init_adapter"]) == 64


def test_warm_start_refuses_what_cannot_fit(tiny_adapter, tmp_path):
    r = run_cli("train", "--data", str(TRAIN_SAMPLE), "--output", str(tmp_path / "a"), "--init-adapter",
                str(tmp_path), "--max-steps", "1", "--quiet")
    assert r.returncode == 4 and "not an adapter directory" in r.stderr
    r = run_cli("train", "--data", str(TRAIN_SAMPLE), "--output", str(tmp_path / "b"), "--init-adapter",
                str(tiny_adapter), "--full", "--max-steps", "1", "--quiet")
    assert r.returncode == 2 and "cannot be combined with --full" in r.stderr


def _v2_from_sample(path):
    """The dev sample as SQuAD 2.0: per article, the first paragraph's questions asked of its last
    paragraph too (unanswerable there: a paragraph that holds none of their answers)."""
    doc = json.loads(DEV_SAMPLE.read_text())
    for art in doc["data"]:
        art["paragraphs"] = [dict(p, qas=p["qas"][:8]) for p in art["paragraphs"]]
        first, last = art["paragraphs"][0], art["paragraphs"][-1]
        unans = [{"id": q["id"] + "-u", "question": q["question"], "answers": [], "is_impossible": True}
                 for q in first["qas"] if not any(a["text"] in last["context"] for a in q["answers"])]
        last["qas"] = last["qas"] + unans
    doc["version"] = "v2.0"
    return write_json(path, doc)


def test_tuned_threshold_is_stored_and_exported(committed_adapter, tmp_path):
    """eval --tune-articles --save-threshold: the threshold lands in qabridge.json, then in the GGUF."""
    import shutil

    from qabridge.core.model_file import ModelFile

    adapter = tmp_path / "lora"
    shutil.copytree(committed_adapter, adapter)
    data = _v2_from_sample(tmp_path / "v2.json")
    r = run_cli("eval", "--adapter", str(adapter), "--data", str(data), "--tune-articles", "1",
                "--save-threshold", str(adapter), "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["metric"] == "squad_v2" and res["tuned"]["count"] > 0 and res["count"] > 0
    q = json.loads((adapter / "qabridge.json").read_text())
    assert q["null_threshold"] == res["tuned"]["threshold"] == res["threshold"]
    assert "articles 1-1 of v2.json" in q["null_threshold_tuning"] and f"F1 {res['f1']:.2f}" in q["null_threshold_tuning"]
    # --limit caps both parts: N questions to tune on, N to report on (a quick smoke run).
    small = run_cli("eval", "--adapter", str(adapter), "--data", str(data), "--tune-articles", "1", "--limit", "4",
                    "--json", "--device", "cpu", "--predictions", str(tmp_path / "p.json"),
                    "--null-scores", str(tmp_path / "na.json"))
    assert small.returncode == 0, small.stderr
    small = json.loads(small.stdout)
    assert small["tuned"]["count"] == 4 < res["tuned"]["count"] and small["count"] == 4 < res["count"]
    # The null scores are what the threshold was compared with: an answer is empty exactly where it is exceeded.
    preds, nulls = json.loads((tmp_path / "p.json").read_text()), json.loads((tmp_path / "na.json").read_text())
    assert len(nulls) == 4 and nulls.keys() == preds.keys()
    assert all((preds[k] == "") == (nulls[k] > small["threshold"]) for k in preds)
    run = run_cli("export", "--adapter", str(adapter), "--output", str(tmp_path / "m.gguf"), "--outtype", "f32",
                  "--modelfile", str(tmp_path / "Modelfile"))
    assert run.returncode == 0, run.stderr
    mf = ModelFile(tmp_path / "m.gguf")
    try:
        assert mf.null_threshold == pytest.approx(q["null_threshold"], abs=1e-6)
        assert mf.abstention["tuning"] == q["null_threshold_tuning"]
    finally:
        mf.close()
    # On v1.1 data a threshold measures what abstaining costs (every abstention there is wrong).
    on = json.loads(run_cli("eval", "--adapter", str(adapter), "--data", str(DEV_SAMPLE), "--limit", "20", "--json",
                            "--null-threshold", "-1e9", "--device", "cpu").stdout)
    off = json.loads(run_cli("eval", "--adapter", str(adapter), "--data", str(DEV_SAMPLE), "--limit", "20", "--json",
                             "--device", "cpu").stdout)
    assert on["abstained"] == 20 and on["f1"] == 0.0 < off["f1"] and "abstained" not in off
    assert on["without_abstention"] == {"exact_match": off["exact_match"], "f1": off["f1"]}
    bad = run_cli("eval", "--adapter", str(adapter), "--data", str(DEV_SAMPLE), "--save-threshold", str(adapter))
    assert bad.returncode == 2 and "give --tune-articles" in bad.stderr


def test_stop_after_pauses_and_the_same_command_resumes(tmp_path):
    out = tmp_path / "paused"
    args = ["train", "--data", str(TRAIN_SAMPLE), "--output", str(out), "--max-steps", "6", "--batch-size", "2",
            "--max-seq-len", "64", "--doc-stride", "16", "--lora-r", "2", "--eval-data", str(DEV_SAMPLE),
            "--eval-every", "1", "--curve-limit", "3", "--eval-limit", "3", "--checkpoint-every", "2", "--quiet"]
    r = run_cli(*args, "--stop-after", "0.000001")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "paused" in r.stdout and "step 1 of 6" in r.stdout
    assert (out / "checkpoint" / "state.pt").exists() and not (out / "adapter_model.safetensors").exists()
    r = run_cli(*args)  # the same run without the pause: goes on from step 1, the schedule unchanged
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from" in r.stderr and "at step 1/6" in r.stderr
    # quiet, yet each checkpoint says where the run is and how fast it goes
    assert re.search(r"checkpoint: step 2/6, loss \d+\.\d+, \d+\.\d windows/s this sitting, ~\d+\.\d h to go", r.stderr)
    assert "checkpoint: step 4/6" in r.stderr
    s = json.loads((out / "training_summary.json").read_text())
    assert s["steps"] == s["planned_steps"] == 6 and not (out / "checkpoint").exists()
    assert [p["step"] for p in s["curve"]] == [1, 2, 3, 4, 5]  # the point before the pause kept
    bad = run_cli(*args[:-1], "--stop-after", "0")
    assert bad.returncode == 2 and "--stop-after" in bad.stderr and "Traceback" not in bad.stderr


def test_precision_is_chosen_by_device_and_recorded(tmp_path):
    from qabridge.core.machine import cpu_info
    from qabridge.errors import UsageError
    from qabridge.train.trainer import pick_precision

    native = bool({"avx512_bf16", "amx_bf16"} & set(cpu_info().flags))
    assert pick_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert pick_precision("auto", "cuda:0") == "bf16" and pick_precision("fp32", "cuda") == "fp32"
    with pytest.raises(UsageError):
        pick_precision("fp16", "cpu")
    for precision in ("bf16", "fp32"):
        out = tmp_path / precision
        r = run_cli("train", "--data", str(TRAIN_SAMPLE), "--output", str(out), "--max-steps", "2", "--batch-size", "2",
                    "--max-seq-len", "64", "--lora-r", "2", "--quiet", "--device", "cpu", "--precision", precision)
        assert r.returncode == 0, r.stderr[-2000:]
        s = json.loads((out / "training_summary.json").read_text())
        assert s["precision"] == precision and s["final_loss"] == s["final_loss"]  # a number, not NaN


def test_cpu_training_preloads_tcmalloc_when_installed(tmp_path):
    """`qabridge train` on the CPU re-executes itself on tcmalloc (1.4-1.6x the windows/s of glibc's
    malloc on long windows); QABRIDGE_ALLOCATOR=system keeps glibc's; a bad value is refused.
    scripts/setup-debian.sh installs libtcmalloc-minimal4, so CI takes the tcmalloc branch."""
    from qabridge.train.allocator import find_tcmalloc

    args = ("train", "--data", str(TRAIN_SAMPLE), "--max-steps", "1", "--batch-size", "2", "--max-seq-len", "64",
            "--lora-r", "2", "--quiet", "--device", "cpu")
    env = {"LD_PRELOAD": "", "QABRIDGE_ALLOCATOR_REEXEC": ""}
    r = run_cli(*args, "--output", str(tmp_path / "auto"), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    auto = json.loads((tmp_path / "auto" / "training_summary.json").read_text())
    if find_tcmalloc() is None:
        assert auto["allocator"] == "system" and "libtcmalloc-minimal4" in r.stderr
    else:
        assert auto["allocator"] == "tcmalloc" and "allocator: glibc" not in r.stderr
    r = run_cli(*args, "--output", str(tmp_path / "system"), env={**env, "QABRIDGE_ALLOCATOR": "system"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "system" / "training_summary.json").read_text())["allocator"] == "system"
    assert "allocator:" not in r.stderr
    bad = run_cli(*args, "--output", str(tmp_path / "bad"), env={**env, "QABRIDGE_ALLOCATOR": "fast"})
    assert bad.returncode == 2 and "QABRIDGE_ALLOCATOR" in bad.stderr and "Traceback" not in bad.stderr
