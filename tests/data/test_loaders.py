import json
import sys
from collections import Counter

import numpy as np
import pytest

from data.fixtures import (
    CLEVR_ANSWERS,
    COCO_CATEGORIES,
    INSTAORDER_EXPECTED,
    INSTAORDER_ORDERS,
    SCIENCEQA_PROBLEMS,
    write_aokvqa,
    write_aokvqa_parquet,
    write_clevr,
    write_coco_train2014,
    write_instaorder,
    write_pope_parquet,
    write_pope_val,
    write_scienceqa,
    write_scienceqa_parquet,
    write_vizwiz,
)
from superneurons.data.loaders import (
    TASKS,
    label_counts,
    load_aokvqa,
    load_clevr,
    load_instaorder,
    load_pope,
    load_scienceqa,
    load_task,
    load_vizwiz,
)
from superneurons.data.prompts import binary_choice_question
from superneurons.data.records import DataError, Record, check_label


def assert_valid(records: list[Record]) -> None:
    """Unique ids, binary labels, and every image either a PIL image or an existing file."""
    assert len({r.id for r in records}) == len(records)
    for record in records:
        check_label(record, record.id)
        assert record.is_binary
        assert not hasattr(record.image, "exists") or record.image.exists(), record.image


def pixels(record: Record) -> np.ndarray:
    return np.asarray(record.load_image())


# --- POPE ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["random", "adversarial"])
def test_pope_val_reads_the_variant_file(tmp_path, variant):
    lines = write_pope_val(tmp_path)[variant]
    records = load_task(f"pope-{variant}", tmp_path, "val")
    assert_valid(records)
    assert [r.question for r in records] == [line["text"] for line in lines]
    assert [r.label for r in records] == [line["label"] for line in lines]
    assert records[0].id == f"pope-{variant}-1"
    assert records[0].image == tmp_path / "val2014" / lines[0]["image"]
    assert records[0].family == f"pope-{variant}"
    assert label_counts(records) == {"no": 3, "yes": 3}


def test_pope_val_at_the_top_of_data_dir_with_an_images_folder(tmp_path):
    write_pope_val(tmp_path, ["popular"], nested=False)
    (tmp_path / "val2014").rename(tmp_path / "images")
    records = load_pope(tmp_path, "val", variant="popular")
    assert len(records) == 6
    assert records[0].image.parent == tmp_path / "images"


def test_pope_parquet_gives_the_same_records_as_the_raw_files(tmp_path):
    raw_dir, parquet_dir = tmp_path / "raw", tmp_path / "parquet"
    write_pope_val(raw_dir)
    write_pope_parquet(parquet_dir, raw_dir / "val2014")
    for variant in ("popular", "adversarial"):
        raw = load_pope(raw_dir, "val", variant=variant)
        mirrored = load_pope(parquet_dir, "val", variant=variant)
        assert [r.id for r in mirrored] == [r.id for r in raw]
        for a, b in zip(raw, mirrored, strict=True):
            assert (a.question, a.label, a.family, a.extra) == (
                b.question,
                b.label,
                b.family,
                b.extra,
            )
            assert np.array_equal(pixels(a), pixels(b))


def test_pope_train_samples_balanced_negatives_per_variant(tmp_path):
    present = write_coco_train2014(tmp_path)
    names = set(COCO_CATEGORIES.values())
    frequency = Counter(c for cats in present.values() for c in cats)
    cooccur = Counter((a, b) for cats in present.values() for a in cats for b in cats if a != b)
    negatives, positives = {}, {}
    for variant in ("random", "popular", "adversarial"):
        records = load_task(f"pope-{variant}", tmp_path, "train", seed=3)
        assert_valid(records)
        assert all(r.question == f"Is there a {r.extra['category']} in the image?" for r in records)
        by_image: dict[int, list[Record]] = {}
        for r in records:
            by_image.setdefault(r.extra["image_id"], []).append(r)
        assert set(by_image) == set(present)
        for image_id, group in by_image.items():
            labels = Counter(r.label for r in group)
            assert labels["yes"] == labels["no"] == min(3, len(present[image_id]))
            for r in group:
                assert (r.extra["category"] in present[image_id]) == (r.label == "yes")
        negatives[variant] = {
            i: {r.extra["category"] for r in g if r.label == "no"} for i, g in by_image.items()
        }
        positives[variant] = {
            i: {r.extra["category"] for r in g if r.label == "yes"} for i, g in by_image.items()
        }
        assert load_task(f"pope-{variant}", tmp_path, "train", seed=3) == records  # seeded
    for image_id, here in present.items():
        absent = names - here
        # popular: the most frequent absent categories
        chosen = negatives["popular"][image_id]
        assert min(frequency[c] for c in chosen) >= max(frequency[c] for c in absent - chosen)
        # adversarial: absent categories co-occurring most with the present ones
        score = {c: sum(cooccur[(p, c)] for p in here) for c in absent}
        chosen = negatives["adversarial"][image_id]
        assert min(score[c] for c in chosen) >= max(score[c] for c in absent - chosen)
    assert negatives["adversarial"][8] == {"knife"}  # fork's companion, more frequent than cup
    assert negatives["adversarial"][7] == {"car"}  # person's most frequent companion
    assert negatives["popular"][8] == {"person"}
    # The variants differ in their negatives only.
    assert positives["random"] == positives["popular"] == positives["adversarial"]
    one = load_pope(tmp_path, "train", seed=3, variant="random", n_images=3)
    assert len({r.extra["image_id"] for r in one}) == 3


# --- VizWiz ----------------------------------------------------------------------------------


def test_vizwiz_keeps_yes_no_questions_with_a_clear_majority(tmp_path):
    expected = write_vizwiz(tmp_path, "train")
    records = load_task("vizwiz", tmp_path, "train")
    assert_valid(records)
    kept = [(k, label) for k, label in enumerate(expected) if label is not None]
    assert [r.id for r in records] == [f"vizwiz-VizWiz_train_{k:08d}" for k, _ in kept]
    assert [r.label for r in records] == [label for _, label in kept]
    assert records[0].image == tmp_path / "train" / "VizWiz_train_00000000.jpg"
    assert len(records[0].extra["answers"]) == 10


# --- CLEVR -----------------------------------------------------------------------------------


def test_clevr_keeps_yes_no_answers(tmp_path):
    write_clevr(tmp_path, "val")
    records = load_task("clevr", tmp_path, "val")
    assert_valid(records)
    kept = [k for k, a in enumerate(CLEVR_ANSWERS) if a in ("yes", "no")]
    assert [r.id for r in records] == [f"clevr-val-{k}" for k in kept]
    assert [r.label for r in records] == [CLEVR_ANSWERS[k] for k in kept]
    assert records[-1].image == tmp_path / "images" / "val" / "CLEVR_val_000002.png"


# --- A-OKVQA ---------------------------------------------------------------------------------


def test_aokvqa_turns_each_question_into_a_balanced_binary_pair(tmp_path):
    entries = write_aokvqa(tmp_path, "val")
    records = load_task("aokvqa", tmp_path, "val", seed=0)
    assert_valid(records)
    assert label_counts(records) == {"no": 3, "yes": 3}
    for entry, (yes, no) in zip(
        entries, zip(records[::2], records[1::2], strict=True), strict=True
    ):
        choices, answer = entry["choices"], entry["correct_choice_idx"]
        assert (yes.label, no.label) == ("yes", "no")
        assert yes.question == binary_choice_question(entry["question"], choices[answer])
        assert no.extra["choice_idx"] != answer
        assert no.question == binary_choice_question(
            entry["question"], choices[no.extra["choice_idx"]]
        )
        assert yes.image == tmp_path / "val2017" / f"{entry['image_id']:012d}.jpg"
        assert yes.family == "aokvqa"
        assert yes.extra["choices"] == choices and yes.extra["correct_choice_idx"] == answer
    # The wrong choice is seeded: same seed, same draw; other seeds draw others.
    assert load_aokvqa(tmp_path, "val", seed=0) == records
    draws = {
        tuple(r.extra["choice_idx"] for r in load_aokvqa(tmp_path, "val", seed=s)[1::2])
        for s in range(8)
    }
    assert len(draws) > 1


def test_aokvqa_parquet_matches_the_raw_file(tmp_path):
    write_aokvqa(tmp_path / "raw", "val")
    write_aokvqa_parquet(tmp_path / "hf", tmp_path / "raw" / "val2017")
    raw, mirrored = load_aokvqa(tmp_path / "raw", "val"), load_aokvqa(tmp_path / "hf", "val")
    assert [(r.id, r.question, r.label) for r in raw] == [
        (r.id, r.question, r.label) for r in mirrored
    ]
    assert np.array_equal(pixels(raw[0]), pixels(mirrored[0]))


# --- ScienceQA -------------------------------------------------------------------------------


def test_scienceqa_uses_image_problems_of_the_split(tmp_path):
    write_scienceqa(tmp_path)
    records = load_task("scienceqa", tmp_path, "train", seed=1)
    assert_valid(records)
    pids = [p for p, v in SCIENCEQA_PROBLEMS.items() if v[0] == "train" and v[1]]
    assert [r.extra["pid"] for r in records] == [p for p in pids for _ in range(2)]
    assert label_counts(records) == {"no": len(pids), "yes": len(pids)}
    first = records[0]
    _, _, question, choices, answer, hint = SCIENCEQA_PROBLEMS["11"]
    assert first.question == binary_choice_question(question, choices[answer])
    assert first.context == hint
    assert records[2].context is None  # empty hint
    assert first.image == tmp_path / "images" / "train" / "11" / "image.png"
    assert [r.id for r in load_scienceqa(tmp_path, "val")] == [
        "scienceqa-14-yes",
        "scienceqa-14-no",
    ]


def test_scienceqa_parquet_gives_the_same_records_as_the_raw_files(tmp_path):
    write_scienceqa(tmp_path / "raw")
    write_scienceqa_parquet(tmp_path / "hf", tmp_path / "raw")
    for split in ("train", "val"):
        raw = load_scienceqa(tmp_path / "raw", split, seed=5)
        mirrored = load_scienceqa(tmp_path / "hf", split, seed=5)
        assert len(raw) == len(mirrored) > 0
        for a, b in zip(raw, mirrored, strict=True):
            assert (a.question, a.label, a.context, a.family) == (
                b.question,
                b.label,
                b.context,
                b.family,
            )
            assert {k: v for k, v in a.extra.items() if k != "pid"} == b.extra
            assert np.array_equal(pixels(a), pixels(b))


# --- InstaOrder ------------------------------------------------------------------------------


@pytest.mark.parametrize("relation", ["occlusion", "depth"])
def test_instaorder_asks_about_unambiguous_pairs_only(tmp_path, relation):
    write_instaorder(tmp_path, "val")
    records = load_task(f"instaorder-{relation}", tmp_path, "val")
    assert_valid(records)
    got = {tuple(r.extra["annotation_ids"]): r.label for r in records}
    assert got == INSTAORDER_EXPECTED[relation]
    assert label_counts(records)["yes"] == label_counts(records)["no"]
    by_pair = {tuple(r.extra["annotation_ids"]): r for r in records}
    if relation == "occlusion":
        assert by_pair[(101, 102)].question == "Is the person occluding the dog?"
        assert by_pair[(202, 201)].question == "Is the chair occluding the person?"
    else:
        assert by_pair[(105, 102)].question == "Is the cat closer to the camera than the dog?"
    assert by_pair[(101, 102)].image == tmp_path / "val2017" / "000000000001.jpg"


def test_instaorder_bad_order_names_file_and_key(tmp_path):
    orders = json.loads(json.dumps(INSTAORDER_ORDERS))
    orders[1]["occlusion"][0]["order"] = "1>0"
    path = write_instaorder(tmp_path, "val", orders)
    with pytest.raises(DataError, match=r"annotations\[1\]\.occlusion\[0\]") as error:
        load_instaorder(tmp_path, "val")
    assert str(path) in str(error.value)


# --- errors ----------------------------------------------------------------------------------


def test_malformed_files_name_the_file_and_the_key(tmp_path):
    write_pope_val(tmp_path / "pope", ["random"])
    path = tmp_path / "pope" / "output" / "coco" / "coco_pope_random.json"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:-3]
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=rf"{path}:2: not valid JSON"):
        load_pope(tmp_path / "pope", "val")

    write_aokvqa(tmp_path / "aok", "val")
    path = tmp_path / "aok" / "aokvqa_v1p0_val.json"
    entries = json.loads(path.read_text())
    del entries[2]["choices"]
    path.write_text(json.dumps(entries))
    with pytest.raises(DataError, match=r"entry 2 \(question_id q2abc\): missing key 'choices'"):
        load_aokvqa(tmp_path / "aok", "val")
    entries[2]["choices"], entries[2]["correct_choice_idx"] = ["a", "b"], 7
    path.write_text(json.dumps(entries))
    with pytest.raises(DataError, match=r"answer index 7 is outside the 2 choices"):
        load_aokvqa(tmp_path / "aok", "val")

    write_scienceqa(tmp_path / "sqa")
    path = tmp_path / "sqa" / "problems.json"
    problems = json.loads(path.read_text())
    del problems["13"]["answer"]
    path.write_text(json.dumps(problems))
    with pytest.raises(DataError, match=r"problems.json: problem '13': missing key 'answer'"):
        load_scienceqa(tmp_path / "sqa", "train")

    path = write_clevr(tmp_path / "clevr", "val")
    path.write_text(json.dumps({"info": {}}))
    with pytest.raises(DataError, match=rf"{path}: missing key 'questions'"):
        load_clevr(tmp_path / "clevr", "val")

    write_coco_train2014(tmp_path / "coco")
    path = tmp_path / "coco" / "annotations" / "instances_train2014.json"
    coco = json.loads(path.read_text())
    del coco["annotations"][4]["category_id"]
    path.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"annotations\[4\]: missing key 'category_id'"):
        load_pope(tmp_path / "coco", "train")

    write_vizwiz(tmp_path / "vw", "val")
    path = tmp_path / "vw" / "val.json"
    entries = json.loads(path.read_text())
    entries[1]["answers"][3] = {"answer_confidence": "yes"}
    path.write_text(json.dumps(entries))
    with pytest.raises(DataError, match=r"entry 1: answers\[3\]: missing key 'answer'"):
        load_vizwiz(tmp_path / "vw", "val")


def test_load_task_errors_say_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match=r"unknown task 'pope'.*pope-random.*instaorder-depth"):
        load_task("pope", tmp_path, "val")
    with pytest.raises(ValueError, match=r"splits \['train', 'val'\]; got 'test'"):
        load_task("clevr", tmp_path, "test")
    with pytest.raises(DataError, match=r"does not exist; expected CLEVR"):
        load_task("clevr", tmp_path / "nowhere", "val")
    with pytest.raises(DataError, match=r"CLEVR_val_questions.json"):
        load_task("clevr", tmp_path, "val")
    with pytest.raises(DataError, match=r"coco_pope_random.json not found.*lmms-lab/POPE parquet"):
        load_task("pope-random", tmp_path, "val")
    with pytest.raises(DataError, match=r"instances_train2014.json"):
        load_task("pope-random", tmp_path, "train")
    with pytest.raises(DataError, match=r"InstaOrder_val2017.json"):
        load_task("instaorder-depth", tmp_path, "val")


def test_parquet_without_datasets_names_the_extra(tmp_path, monkeypatch):
    write_pope_val(tmp_path / "raw", ["random"])
    write_pope_parquet(tmp_path / "hf", tmp_path / "raw" / "val2014", ["random"])
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets → ImportError
    with pytest.raises(ImportError, match=r"superneurons\[data\]"):
        load_pope(tmp_path / "hf", "val")


# --- registry --------------------------------------------------------------------------------


def test_registry_templates_and_the_generic_jsonl_task(tmp_path):
    plain = ("jsonl", "scenes")  # the embedded model's bare questions
    assert {name: spec.template for name, spec in TASKS.items()} == {
        **{name: "llava" for name in TASKS if name not in plain},
        **{name: "plain" for name in plain},
    }
    lines = [{"image": "a.png", "question": "Is it red?", "label": "yes"}] * 2
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    from_dir = load_task("jsonl", tmp_path, "val")
    assert from_dir == load_task("jsonl", tmp_path / "val.jsonl", "anything")
    assert label_counts(from_dir) == {"yes": 2}
    with pytest.raises(DataError, match=r"train.jsonl"):
        load_task("jsonl", tmp_path, "train")
