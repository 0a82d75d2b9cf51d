"""GSM8K formatting and answer checking on the real data; the BIG-bench reader on a tiny archive of the same
layout; prompts and scoring."""

from __future__ import annotations

import pytest

from nca_scale.analysis.eval import bigbench, gsm8k
from nca_scale.errors import UserError


@pytest.fixture(scope="module")
def test_set():
    try:
        return gsm8k.read("test")
    except UserError:
        pytest.skip("../shared/data/gsm8k is not beside the repository")


def test_gsm8k_format_and_answers(test_set):
    assert len(test_set) == 1319 and len(gsm8k.read("train")) == 7473
    cot, final = gsm8k.split_answer(test_set[0]["answer"])
    assert final == "18" and "<<" not in cot and "####" not in cot
    prompts = gsm8k.prompts(test_set[:50], shots=3, seed=0)
    assert prompts == gsm8k.prompts(test_set[:50], shots=3, seed=0)
    p = prompts[0]
    assert p.count("Question:\n") == 4 and p.count("Final Answer: ") == 3 and p.endswith("Answer:\n")
    assert p.endswith(gsm8k.format_example(test_set[0]["question"]))
    assert test_set[0]["question"].strip() not in p[: -len(gsm8k.format_example(test_set[0]["question"]))]  # not its own shot
    assert gsm8k.extract("She sells 16 - 3 - 4 = 9 eggs.\nFinal Answer: 18") == "18"
    assert gsm8k.extract("so the total is $1,234.") == "$1234"
    assert gsm8k.is_correct("18", "18") and gsm8k.is_correct("18.0", "18") and not gsm8k.is_correct("17", "18")
    assert gsm8k.is_correct("$1234", "1234") and not gsm8k.is_correct("", "18")
    samples = [[{"text": "x\nFinal Answer: 18"}, {"text": "Final Answer: 3"}], [{"text": "no idea"}] * 2]
    metrics, records = gsm8k.score(test_set[:2], samples, [1, 2])
    assert metrics == {"pass@1": 0.25, "pass@2": 0.5, "problems": 2}
    assert records[0]["correct"] == [True, False]


def test_bigbench_reader_prompts_and_scores(tiny_bigbench):
    specs = bigbench.read_tasks(tiny_bigbench, ["toy_copy", "toy_choice", "toy_sub"])
    assert len(specs["toy_sub"]) == 3  # the parent's task.json (no examples) and its two subtasks
    with pytest.raises(UserError, match="toy_gen_py"):
        bigbench.read_tasks(tiny_bigbench, ["toy_gen_py"])
    tasks, dropped = bigbench.build(tiny_bigbench, ["toy_copy", "toy_choice", "toy_sub", "toy_tiny"], shots=2,
                                    max_examples=5, min_train_examples=10, val_fraction=0.25, seed=0)
    assert set(tasks) == {"toy_copy", "toy_choice", "toy_sub"} and "toy_tiny" in dropped
    assert [len(t["examples"]) for t in tasks.values()] == [5, 5, 5]
    copy = tasks["toy_copy"]["prompts"][0]
    assert copy.startswith("Q: say w") and copy.endswith("\nA: ") and copy.count("\nA: ") == 3
    choice = tasks["toy_choice"]["prompts"][0]
    assert choice.startswith("Pick one.\n\nQuestion: ") and "\n  choice: even\n  choice: odd\nAnswer: " in choice
    assert tasks["toy_choice"]["n_choices"] == 2 and tasks["toy_copy"]["n_choices"] is None
    # validation and train are disjoint: no query is one of its own shots
    for t in tasks.values():
        for ex, p in zip(t["examples"], t["prompts"]):
            assert p.count(bigbench.query(ex)) == 1
    assert bigbench.correct(" W3 \nQ: more", ["w3"]) and not bigbench.correct("w3 w4", ["w3"])
    # scoring: copy task all right on one sample of two; choice task right half the time = chance = 0 normalised
    samples = {
        "toy_copy": [[{"text": ex["targets"][0]}, {"text": "nope"}] for ex in tasks["toy_copy"]["examples"]],
        "toy_choice": [[{"text": ex["targets"][0]}, {"text": "even" if ex["targets"][0] == "odd" else "odd"}]
                       for ex in tasks["toy_choice"]["examples"]],
        "toy_sub": [[{"text": ex["targets"][-1]}] * 2 for ex in tasks["toy_sub"]["examples"]],
    }
    summary, per_task = bigbench.score(tasks, samples, [1, 2])
    assert per_task["toy_copy"]["pass@1"] == 0.5 and per_task["toy_copy"]["pass@2"] == 1.0
    assert per_task["toy_choice"]["pass@1"] == 0.5 and per_task["toy_choice"]["normalised_pass@1"] == 0.0
    assert per_task["toy_choice"]["normalised_pass@2"] == 1.0
    assert per_task["toy_sub"]["pass@1"] == 1.0
    assert summary["normalised_pass@1"] == pytest.approx((0.5 + 0.0 + 1.0) / 3) and summary["tasks"] == 3


def test_finetune_documents_keep_evaluation_data_out(test_set, tiny_bigbench, tmp_path):
    from nca_scale.analysis.eval import finetune

    docs = finetune.gsm8k_documents(None, shots=5, epochs=2, seed=0)
    train = gsm8k.read("train")
    assert len(docs) == 2 * len(train)
    assert docs[0]["text"].count("Question:\n") == 6 and docs[0]["text"].endswith(gsm8k.format_example(train[0]["question"], train[0]["answer"]))
    assert docs[0]["text"] != docs[len(train)]["text"]  # fresh shots each epoch
    assert not any(t["question"].strip() in docs[0]["text"] for t in test_set[:200])
    bbl, dropped = finetune.bbl_documents(tiny_bigbench, ["toy_copy", "toy_choice", "toy_tiny"], max_per_task=50,
                                          min_train_examples=10, val_fraction=0.25, seed=0)
    assert "toy_tiny" in dropped and len(bbl) == 30 + 22  # the train sides of 40 and 30 examples
    tasks, _ = bigbench.build(tiny_bigbench, ["toy_copy"], shots=2, max_examples=50, min_train_examples=10,
                              val_fraction=0.25, seed=0)
    for ex in tasks["toy_copy"]["examples"]:  # no validation query is ever a fine-tuning document's last example
        assert not any(d["text"].endswith(bigbench.query(ex) + ex["targets"][0]) for d in bbl)
    out = finetune.write_jsonl(bbl, tmp_path / "bbl.jsonl")
    assert len(out.read_text().splitlines()) == len(bbl)
