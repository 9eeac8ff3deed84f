"""Zero-shot through lm-eval's HFLM: a local 10-item task runs offline on a tiny model; the MMLU-exemplar
task is parsed from the file lm-eval ships; user task files are checked at the boundary."""

import json

import pytest
import torch

from conftest import tiny_model, tiny_tokenizer
from dynslice.errors import EvaluationError
from dynslice.evaluation.local_tasks import (jsonl_task, lm_eval_prompts_file, mmlu_exemplar_task, normalize_item,
                                       parse_cot_prompts)
from dynslice.evaluation.zeroshot import plan_tasks, zero_shot

pytest.importorskip("lm_eval", reason="zero-shot evaluation needs lm-eval")

ITEMS = [{"question": f"{i} plus one is", "choices": [str(i + 1), str(i + 2), "no"], "answer": "A" if i % 2 else 0}
         for i in range(10)]


@pytest.fixture
def ten_items(tmp_path):
    path = tmp_path / "ten items.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    return path


def _expected_accuracy(model, tok, items) -> tuple[float, float]:
    """acc and acc_norm computed here the way the task defines them: the choice with the highest summed
    log-likelihood after "Question: ...\nAnswer:" (acc_norm: divided by the choice's length in characters)."""
    hits = hits_norm = 0
    for item in items:
        context = f"Question: {item['question'].strip()}\nAnswer:"
        head = tok(context, add_special_tokens=False).input_ids
        lls = []
        for choice in item["choices"]:
            whole = tok(context + " " + choice, add_special_tokens=False).input_ids
            with torch.no_grad():
                logp = model(torch.tensor([whole[:-1]])).logits.log_softmax(-1)[0]  # [len - 1, V]
            lls.append(sum(float(logp[pos - 1, whole[pos]]) for pos in range(len(head), len(whole))))
        answer = item["answer"] if isinstance(item["answer"], int) else ord(item["answer"]) - ord("A")
        norm = [ll / len(c) for ll, c in zip(lls, item["choices"])]
        hits += max(range(len(lls)), key=lambda k: (lls[k], -k)) == answer
        hits_norm += max(range(len(norm)), key=lambda k: (norm[k], -k)) == answer
    return hits / len(items), hits_norm / len(items)


def test_ten_item_local_task_matches_a_hand_computed_accuracy(ten_items, tmp_path):
    model, tok = tiny_model("llama", dtype=torch.float64), tiny_tokenizer()  # float64: no near-tie flips
    result = zero_shot(model, tok, [str(ten_items)], batch_size=4, cache_dir=tmp_path / "cache")
    assert list(result.tasks) == ["ten_items"]
    scores = result.tasks["ten_items"]
    assert scores["samples"] == 10
    acc, acc_norm = _expected_accuracy(model, tok, ITEMS)
    assert (scores["acc"], scores["acc_norm"]) == pytest.approx((acc, acc_norm))
    assert result.mean_acc == scores["acc"] and result.mean_acc_norm == scores["acc_norm"]


def test_mmlu_exemplars_parse_from_the_file_lm_eval_ships(tmp_path):
    prompts = json.loads(lm_eval_prompts_file().read_text())
    items = parse_cot_prompts(prompts)
    assert len(prompts) == 57 and 260 <= len(items) <= 290  # 5 dev exemplars per subject, a few unparseable
    assert {len(i["choices"]) for i in items} <= {4, 5}
    assert all(0 <= i["answer"] < len(i["choices"]) and i["question"] for i in items)
    assert not any("\x0c" in i["question"] for i in items)  # \frac mangled to a form feed is repaired
    config = mmlu_exemplar_task(tmp_path)
    lines = (tmp_path / "tasks/mmlu_exemplars/mmlu_exemplars.jsonl").read_text().splitlines()
    assert len(lines) == len(items) and config["task"] == "mmlu_exemplars"
    assert (tmp_path / "tasks/mmlu_exemplars/mmlu_exemplars.yaml").is_file()
    assert mmlu_exemplar_task(tmp_path) == config  # built once, then reused


def test_parse_one_block():
    text = ("The following are multiple choice questions (with answers) about x.\n\n"
            "Q: Which is even?\n(A) 1 (B) 2\n(C) 3 (D) 5\nA: Let's think step by step. Two. The answer is (B).\n\n"
            "Q: No options here\nA: The answer is (A).")
    assert parse_cot_prompts({"the_subject": text}) == [
        {"subject": "the subject", "question": "Which is even?", "choices": ["1", "2", "3", "5"], "answer": 1}]


def test_user_jsonl_is_normalized_once(ten_items, tmp_path):
    config = jsonl_task(ten_items, tmp_path)
    assert config["task"] == "ten_items" and config["output_type"] == "multiple_choice"
    written = [json.loads(line) for line in open(config["dataset_kwargs"]["data_files"]["test"])]
    assert [w["answer"] for w in written] == [0, 0] * 5  # letters become indexes
    assert jsonl_task(ten_items, tmp_path) == config


@pytest.mark.parametrize("record, words", [
    ({"choices": ["a", "b"], "answer": 0}, "question"),
    ({"question": "q", "choices": ["a"], "answer": 0}, "at least two"),
    ({"question": "q", "choices": ["a", "b"], "answer": 2}, r"choice index in \[0, 2\)"),
    ({"question": "q", "choices": ["a", "b"], "answer": True}, "choice index"),
])
def test_bad_items_name_the_field(record, words):
    with pytest.raises(EvaluationError, match=words):
        normalize_item(record, "f.jsonl:1")


def test_task_specs(tmp_path, ten_items):
    (tmp_path / "broken.jsonl").write_text('{"question": "q"\n')
    with pytest.raises(EvaluationError, match="not valid JSON"):
        plan_tasks([str(tmp_path / "broken.jsonl")], tmp_path)
    with pytest.raises(EvaluationError, match="no such task file"):
        plan_tasks([str(tmp_path / "missing.jsonl")], tmp_path)
    with pytest.raises(EvaluationError, match="no task given"):
        plan_tasks([], tmp_path)
    plan = plan_tasks(["piqa", str(ten_items)], tmp_path)
    assert plan.needs_registry and plan.specs[0] == "piqa" and plan.specs[1]["task"] == "ten_items"
    assert not plan_tasks([str(ten_items)], tmp_path).needs_registry  # local tasks skip lm-eval's slow index
