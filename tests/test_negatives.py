"""Generated unanswerable examples: correctness of each kind, determinism, counts, features, training."""

from __future__ import annotations

import json

import pytest

from qabridge.errors import UsageError
from qabridge.train.metrics import normalize_answer
from qabridge.train.negatives import (
    DEFAULT_METHODS,
    Corpus,
    NegativeConfig,
    adversarial_candidates,
    generate_negatives,
    with_negatives,
)
from qabridge.train.squad import Answer, Example, load_squad

from .helpers import DEV_SAMPLE, TRAIN_SAMPLE


@pytest.fixture(scope="module")
def train_sample() -> list[Example]:
    return load_squad(TRAIN_SAMPLE)


@pytest.fixture(scope="module")
def pool(train_sample) -> list[Example]:
    """The train and dev samples together: 6 articles, 22 paragraphs, real SQuAD questions."""
    return train_sample + load_squad(DEV_SAMPLE)


@pytest.fixture(scope="module")
def generated(pool):
    return generate_negatives(pool, NegativeConfig(ratio=1.0, seed=7))


def _word_in(needle: str, text: str) -> bool:
    import re

    return re.search(r"(?<!\w)" + re.escape(needle.lower()) + r"(?!\w)", text.lower()) is not None


def test_topical_negatives_never_contain_the_answer(pool, generated):
    negs, _ = generated
    by_id = {e.id: e for e in pool}
    topical = [n for n in negs if n.kind == "topical"]
    assert len(topical) > 30
    for n in topical:
        src = by_id[n.source_id]
        ex = n.example
        assert ex.question == src.question and ex.title == src.title  # same article, same question
        assert ex.context != src.context
        assert any(ex.context == e.context for e in pool if e.title == src.title)  # a real paragraph of it
        for a in src.answers:
            assert a.text.lower() not in ex.context.lower()
            assert f" {normalize_answer(a.text)} " not in f" {normalize_answer(ex.context)} "


def test_adversarial_negatives_change_the_question_and_swap_in_absent_text(pool, generated):
    negs, _ = generated
    by_id = {e.id: e for e in pool}
    adv = [n for n in negs if n.kind == "adversarial"]
    assert len(adv) > 30
    methods = {n.method for n in adv}
    assert {"entity", "negation", "antonym"} <= methods, methods
    for n in adv:
        src, ex = by_id[n.source_id], n.example
        assert ex.context == src.context  # on its own paragraph
        assert ex.question != src.question
        if n.method == "negation":
            assert n.new in ("not", "never") and n.new not in src.question.split()
            continue
        assert n.old and n.new and n.old != n.new
        assert n.new in ex.question and n.old in src.question
        # The swapped-in entity/number/year/date/antonym/attribute is not in the paragraph...
        if n.method != "attribute":
            assert not _word_in(n.new, ex.context), (n.detail, ex.context)
        # ...while what it replaced is (the question was anchored to this paragraph).
        if n.method in ("entity", "year", "number", "date"):
            assert _word_in(n.old, src.context), n.detail


def test_every_generated_example_is_marked_unanswerable(generated):
    negs, report = generated
    ids = [n.example.id for n in negs]
    assert len(ids) == len(set(ids))
    for n in negs:
        assert n.example.is_impossible and n.example.answers == () and not n.example.has_answer
        assert n.example.kind == n.kind and n.kind in ("topical", "adversarial")
    assert sum(report.counts.values()) == len(negs)
    assert sum(report.methods.values()) == len(negs)


def test_generation_is_deterministic_under_a_seed(pool):
    def run(seed):
        negs, _ = generate_negatives(pool, NegativeConfig(ratio=0.5, seed=seed))
        return [(n.example.id, n.example.question, n.example.context) for n in negs]

    a = run(3)
    assert a == run(3)
    assert a != run(4)
    # Order of the input does not matter for what each source question becomes.
    negs_rev, _ = generate_negatives(list(reversed(pool)), NegativeConfig(ratio=1.0, seed=3))
    negs_fwd, _ = generate_negatives(pool, NegativeConfig(ratio=1.0, seed=3))
    fwd = {n.example.id: n.example.question for n in negs_fwd}
    shared = [n for n in negs_rev if n.example.id in fwd]
    assert shared and all(fwd[n.example.id] == n.example.question for n in shared)


@pytest.mark.parametrize("kinds, ratio", [(("topical",), 0.33), (("adversarial",), 0.25),
                                          (("topical", "adversarial"), 0.33), (("topical", "adversarial"), 0.1)])
def test_counts_follow_the_ratio(pool, kinds, ratio):
    answerable = sum(e.has_answer for e in pool)
    negs, report = generate_negatives(pool, NegativeConfig(kinds=kinds, ratio=ratio, seed=1))
    want = round(ratio * answerable)
    assert report.requested == want and report.source_questions == answerable
    assert len(negs) == want and report.shortfall == 0
    assert set(report.counts) == set(kinds)
    if len(kinds) == 2:  # split evenly, the odd one to the first kind
        assert abs(report.counts["topical"] - report.counts["adversarial"]) <= 1


def test_a_kind_that_runs_dry_hands_its_share_over():
    # Questions with nothing to perturb (no name, number, date, antonym or negatable verb) give
    # no adversarial negative, so topical ones make up the requested count.
    ctx1 = "Alice founded Acme in Paris in 1901."
    ctx2 = "The company grew quickly after the war."
    qa = [("What did she do?", "founded Acme"), ("What did she start?", "Acme"), ("What did it see?", "Paris"),
          ("What did they get?", "1901")]
    ex = [Example(f"q{i}", "t", ctx1, q, (Answer(a, ctx1.index(a)),)) for i, (q, a) in enumerate(qa)]
    other = Example("o", "t", ctx2, "What grew?", (Answer("The company", 0),))
    negs, report = generate_negatives(ex, NegativeConfig(kinds=("topical", "adversarial"), ratio=1.0, seed=0),
                                      corpus=ex + [other])
    assert report.requested == 4 and report.counts == {"topical": 4, "adversarial": 0} and report.shortfall == 0
    assert all(n.example.context == ctx2 for n in negs)
    # Asking for more than one of each kind per question: the rest is reported as shortfall.
    negs, report = generate_negatives(ex, NegativeConfig(kinds=("topical", "adversarial"), ratio=2.0, seed=0),
                                      corpus=ex + [other])
    assert report.requested == 8 and len(negs) == 4 and report.shortfall == 4
    assert len({(n.source_id, n.kind) for n in negs}) == len(negs)  # one negative per source and kind


def test_each_adversarial_method_on_a_hand_made_paragraph():
    paras = [
        ("Alice Smith founded Acme Corporation in Paris in 1901 and sold 3,500 cars in March. "
         "It was the first factory of its kind in France."),
        "Bob Jones moved to Berlin in 1920 and founded Bolt Corporation; it sold 4,200 bikes in June.",
        "Carol White lived in Vienna in 1911 and wrote 7,100 letters in October.",
    ]
    rows = [("p0", 0, "Who founded Acme Corporation in Paris?", "Alice Smith"),
            ("y0", 0, "What did Alice Smith found in 1901?", "Acme Corporation"),
            ("n0", 0, "How many cars did Acme sell, 3,500 or more?", "3,500"),
            ("d0", 0, "In which month did Acme sell 3,500 cars in March?", "March"),
            ("a0", 0, "What was the first factory of its kind in France?", "It"),
            ("g0", 1, "Who founded Bolt Corporation?", "Bob Jones"),
            ("g1", 2, "Who lived in Vienna?", "Carol White")]
    ex = [Example(i, "t", paras[p], q, (Answer(a, paras[p].index(a)),)) for i, p, q, a in rows]
    corpus = Corpus(ex)
    cands = {e.id: adversarial_candidates(e, corpus, seed=0) for e in ex}
    # entity: 'Paris' -> a place from another paragraph (Berlin/Vienna), never one in this one.
    ent = [c for c in cands["p0"]["entity"] if c.old == "Paris"]
    assert ent and ent[0].new in ("Berlin", "Vienna")
    # The person is swapped for another person of the corpus, not for a place.
    per = [c for c in cands["y0"]["entity"] if c.old == "Alice Smith"]
    assert per and per[0].new in ("Bob Jones", "Carol White")
    # year: 1901 -> a corpus year the paragraph lacks.
    yr = cands["y0"]["year"][0]
    assert yr.old == "1901" and yr.new in ("1920", "1911")
    # number: same shape (thousands with a comma), absent from the paragraph.
    num = cands["n0"]["number"][0]
    assert num.old == "3,500" and num.new in ("4,200", "7,100")
    # date: another month the paragraph does not mention.
    dt = cands["d0"]["date"][0]
    assert dt.old == "March" and dt.new not in paras[0] and dt.new in dt.question
    # antonym: 'first' -> 'last', which the paragraph does not use; negation: 'What was not the ...'.
    assert cands["a0"]["antonym"][0].question == "What was the last factory of its kind in France?"
    assert cands["a0"]["negation"][0].question == "What was not the first factory of its kind in France?"


def test_attribute_swap_asks_for_what_the_text_does_not_give():
    ctx = "Springfield had a population of 30,000 in 1900."
    e = Example("q", "t", ctx, "What was the population of Springfield in 1900?", (Answer("30,000", 32),))
    c = adversarial_candidates(e, Corpus([e]), seed=0, methods=("attribute",))["attribute"][0]
    assert c.old == "population" and c.new in ("area", "elevation", "capital", "currency", "anthem", "motto")
    assert c.question == f"What was the {c.new} of Springfield in 1900?"


def test_config_validation():
    assert NegativeConfig.parse("none", 0.33, 1) is None
    cfg = NegativeConfig.parse("Adversarial, topical", 0.5, 9)  # case and order do not matter
    assert cfg is not None and cfg.kinds == ("topical", "adversarial") and cfg.ratio == 0.5 and cfg.seed == 9
    for bad, ratio in (("hard", 0.3), ("topical,topical", 0.3), ("none,topical", 0.3), ("topical", 0.0),
                       ("topical", -1.0), ("topical", 50.0), ("", 0.3)):
        if bad == "":
            assert NegativeConfig.parse(bad, ratio, 1) is None  # empty = none
            continue
        with pytest.raises(UsageError):
            NegativeConfig.parse(bad, ratio, 1)


def test_features_put_every_window_of_an_unanswerable_example_on_cls(offline_base, pool):
    from qabridge.core.tokenizer import WordPieceTokenizer
    from qabridge.core.windows import WindowSpec
    from qabridge.train.features import build_features

    tok = WordPieceTokenizer.from_hf_dir(offline_base)
    spec = WindowSpec(96, 32, 48)  # short windows: long paragraphs make several each
    src = [e for e in pool if e.has_answer][:20]
    mixed, _ = with_negatives(src, NegativeConfig(ratio=1.0, seed=0), corpus=pool)
    feats = build_features(mixed, tok, spec)
    neg_idx = {i for i, e in enumerate(mixed) if e.is_impossible}
    assert neg_idx
    rows = [r for r in range(len(feats)) if int(feats.example_index[r]) in neg_idx]
    assert rows and all(feats.start_positions[r] == 0 and feats.end_positions[r] == 0 for r in rows)
    # Answerable examples still have a real span in the window that holds their answer.
    pos = [r for r in range(len(feats)) if int(feats.example_index[r]) not in neg_idx]
    assert any(feats.start_positions[r] > 0 for r in pos)
    assert feats.null_windows >= len(rows)


def test_tiny_training_run_with_negatives(tmp_path, offline_base):
    from qabridge.train.trainer import TrainConfig, train

    out = tmp_path / "neg"
    cfg = TrainConfig(data=str(TRAIN_SAMPLE), output=str(out), max_steps=3, batch_size=4, max_seq_len=128,
                      doc_stride=32, lora_r=4, lora_alpha=8, checkpoint_every=0, device="cpu",
                      negatives="topical,adversarial", negative_ratio=0.5)
    s = train(cfg, progress=False, log=lambda *a: None)
    assert s["steps"] == 3
    neg = s["negatives"]
    answerable = 113  # questions in the train sample
    assert neg["requested"] == round(0.5 * answerable) and neg["source_questions"] == answerable
    assert neg["added"]["topical"] + neg["added"]["adversarial"] == neg["requested"]
    assert s["train_examples"] == answerable + neg["requested"]
    assert s["null_windows"] > 0 and s["unanswerable_in_data"] == 0
    saved = json.loads((out / "training_summary.json").read_text())
    assert saved["negatives"] == neg
    ident = json.loads((out / "qabridge.json").read_text())["train_identity"]
    assert ident["negatives"] == "topical,adversarial" and ident["negative_ratio"] == 0.5
    assert neg["adversarial_methods"] == list(DEFAULT_METHODS) and "adversarial_methods" not in ident


def test_negatives_are_part_of_the_run_identity():
    from qabridge.train.trainer import TrainConfig

    plain = TrainConfig()
    assert "negatives" not in plain.identity()  # runs without negatives keep their old identity
    a = TrainConfig(negatives="topical,adversarial", negative_ratio=0.33)
    b = TrainConfig(negatives="adversarial,topical", negative_ratio=0.33)
    c = TrainConfig(negatives="adversarial", negative_ratio=0.33)
    d = TrainConfig(negatives="adversarial", negative_ratio=0.5)
    assert a.identity() == b.identity()
    assert len({json.dumps(x.identity(), sort_keys=True) for x in (plain, a, c, d)}) == 4
    with pytest.raises(UsageError):
        TrainConfig(negatives="everything").identity()


def test_paragraph_entity_swaps_a_name_for_one_of_its_own_paragraph():
    # Tesla and Marconi are used alike (the corpus's neighbouring words rank replacements);
    # Edison shares the answer's sentence, so "When did Edison patent ..." might be answered there.
    a = ("Tesla worked in New York. Marconi worked in London. In 1900 Tesla and Edison patented a "
         "transmitter. Marconi worked in Bologna.")
    b = ("Tesla worked in Paris. Marconi worked in Rome. Tesla patented a transmitter in 1900. "
         "Marconi's patent for a transmitter came in 1899.")
    ea = Example("a", "t", a, "When did Tesla patent a transmitter?", (Answer("1900", a.index("1900")),))
    eb = Example("b", "t", b, "When did Tesla patent a transmitter?", (Answer("1900", b.index("1900")),))
    corpus = Corpus([ea, eb])
    got = adversarial_candidates(ea, corpus, seed=0, methods=("paragraph_entity",))["paragraph_entity"]
    assert [c.question for c in got] == ["When did Marconi patent a transmitter?"]
    assert (got[0].old, got[0].new) == ("Tesla", "Marconi")
    # In b a sentence naming Marconi holds the question's other words: that question has an answer.
    assert adversarial_candidates(eb, corpus, seed=0, methods=("paragraph_entity",)) == {}
    # The default swap takes a name the paragraph lacks instead.
    assert "paragraph_entity" not in adversarial_candidates(ea, corpus, seed=0, methods=("entity",))


def test_paragraph_entity_negatives_on_real_squad(pool):
    import re

    negs, rep = generate_negatives(pool, NegativeConfig(kinds=("adversarial",), ratio=1.0, seed=3,
                                                        methods=("paragraph_entity",)))
    assert len(negs) > 10 and set(rep.methods) == {"paragraph_entity"}
    by_id = {e.id: e for e in pool}
    for n in negs:
        src = by_id[n.source_id]
        assert n.example.context == src.context and n.example.is_impossible
        assert _word_in(n.old, src.context) and _word_in(n.new, src.context)  # both names are in the text
        assert not _word_in(n.new, src.question) and n.new not in {a.text for a in src.answers}
        # ...and the new one is never in a sentence that holds an answer.
        for m in re.finditer(r"[^.!?]+(?:[.!?]+(?=\s|$)|$)", src.context):
            if any(a.text in m.group() for a in src.answers):
                assert not _word_in(n.new, m.group()), (n.detail, m.group())


def test_adversarial_methods_option():
    from qabridge.train.negatives import METHODS
    from qabridge.train.trainer import TrainConfig

    assert "paragraph_entity" in METHODS and "paragraph_entity" not in DEFAULT_METHODS
    assert NegativeConfig.parse("adversarial", 0.3, 1).methods == DEFAULT_METHODS
    cfg = NegativeConfig.parse("adversarial", 0.3, 1, " Paragraph_Entity,negation ")
    assert cfg.methods == ("negation", "paragraph_entity")  # canonical order, case-blind
    for bad in ("entity,entity", "swap", "negation,,nope"):
        with pytest.raises(UsageError, match="--adversarial-methods"):
            NegativeConfig.parse("adversarial", 0.3, 1, bad)
    # Runs on the default methods keep the identity they had; another mix is another run.
    plain = TrainConfig(negatives="adversarial")
    assert "adversarial_methods" not in plain.identity()
    assert TrainConfig(negatives="adversarial", adversarial_methods=",".join(DEFAULT_METHODS)).identity() == plain.identity()
    other = TrainConfig(negatives="adversarial", adversarial_methods="paragraph_entity,negation").identity()
    assert other["adversarial_methods"] == "negation,paragraph_entity" and other != plain.identity()
