"""Unanswerable training examples generated from answerable SQuAD-format data.

SQuAD 2.0 train is not available here, so the no-answer behaviour is learnt from questions
made unanswerable on purpose (after Rajpurkar, Jia & Liang 2018, whose annotators wrote
unanswerable questions against the paragraph itself, and the perturbation recipes of later
work on generated unanswerable questions):

* **topical**: the question paired with another paragraph of the same article that does not
  contain its answer. Cheap but easy: the paragraph is usually about something else.
* **adversarial**: the question perturbed on its *own* paragraph so that the paragraph no longer
  answers it: a named entity, number, year or date swapped for another of the same kind that
  does not occur in the paragraph (taken from other paragraphs of the corpus), a negation
  inserted, an adjective swapped for its antonym that the paragraph lacks, or an attribute
  asked for that the paragraph does not give. These look like SQuAD 2.0's unanswerables.

No NLP models: regular expressions, capitalised-phrase heuristics and corpus statistics.
Everything is seeded and independent of dict/set ordering, so a config gives the same
examples on every run and machine.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from qabridge.errors import UsageError

from .metrics import normalize_answer
from .squad import Example

KINDS = ("topical", "adversarial")
METHODS = ("entity", "number", "year", "date", "negation", "antonym", "attribute", "paragraph_entity")
#: What ``--negatives adversarial`` uses unless ``--adversarial-methods`` says otherwise: every
#: method but ``paragraph_entity`` (opt-in until a run shows what it buys).
DEFAULT_METHODS = METHODS[:-1]
MAX_RATIO = 4.0


@dataclass(frozen=True)
class NegativeConfig:
    """Which negatives to add and how many.

    ``ratio``: generated negatives per answerable source question (0.33 -> one negative for
    three answerable questions, a quarter of the final mix), split evenly over ``kinds``; a
    kind that runs out of candidates passes its shortfall to the others. ``methods``: the
    adversarial perturbations allowed; each source question uses one, chosen uniformly among
    those that apply to it (so rare kinds such as negation still get a share).
    """

    kinds: tuple[str, ...] = KINDS
    ratio: float = 0.33
    seed: int = 0
    methods: tuple[str, ...] = DEFAULT_METHODS

    def __post_init__(self) -> None:
        if not self.kinds:
            raise UsageError("negatives: at least one kind is needed (topical, adversarial)")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or len(set(self.kinds)) != len(self.kinds):
            raise UsageError(f"negatives: unknown or repeated kind in {','.join(self.kinds)!r}; use {', '.join(KINDS)}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise UsageError(f"negatives: unknown adversarial method(s) {bad}; use {', '.join(METHODS)}")
        if not isinstance(self.ratio, (int, float)) or not 0 < self.ratio <= MAX_RATIO:
            raise UsageError(f"--negative-ratio must be in (0, {MAX_RATIO:g}], not {self.ratio!r}")

    @classmethod
    def parse(cls, negatives: str, ratio: float, seed: int, methods: str | None = None) -> NegativeConfig | None:
        """``--negatives`` text ("none", "topical", "adversarial", "topical,adversarial") -> config or None.

        ``methods``: ``--adversarial-methods``, comma-separated (None or "": DEFAULT_METHODS)."""
        text = (negatives or "none").strip().lower()
        if text == "none":
            return None
        kinds = tuple(k.strip() for k in text.split(",") if k.strip())
        if "none" in kinds:
            raise UsageError(f"--negatives {negatives!r}: 'none' cannot be combined with a kind")
        chosen = DEFAULT_METHODS
        if methods and methods.strip():
            names = [m.strip().lower() for m in methods.split(",") if m.strip()]
            bad = [m for m in names if m not in METHODS]
            if bad or len(set(names)) != len(names):
                raise UsageError(f"--adversarial-methods {methods!r}: unknown or repeated method; use {', '.join(METHODS)}")
            chosen = tuple(m for m in METHODS if m in names)  # one canonical order, as for kinds
        cfg = cls(kinds=kinds, ratio=ratio, seed=seed, methods=chosen)
        # One canonical order: "adversarial,topical" must generate what "topical,adversarial" does.
        return replace(cfg, kinds=tuple(k for k in KINDS if k in kinds))


@dataclass(frozen=True)
class Negative:
    """One generated unanswerable example and where it came from."""

    example: Example  # is_impossible=True, no answers, kind set
    kind: str  # "topical" | "adversarial"
    method: str  # "other_paragraph" for topical, else one of METHODS
    source_id: str
    detail: str  # what changed, for reports: "year: '1998' -> '1875'", "paragraph 3 of 'Montana'"
    old: str = ""  # adversarial: the text taken out of the question ("" for an insertion)
    new: str = ""  # adversarial: the text put in (for a swap, absent from the paragraph except paragraph_entity's)


@dataclass
class NegativeReport:
    requested: int
    source_questions: int
    counts: dict[str, int] = field(default_factory=dict)
    methods: dict[str, int] = field(default_factory=dict)
    shortfall: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"requested": self.requested, "source_questions": self.source_questions, "added": dict(self.counts),
                "methods": dict(sorted(self.methods.items())), "shortfall": self.shortfall,
                "seconds": round(self.seconds, 2)}


# --- built-in word lists --------------------------------------------------------------------------

_ANTONYM_PAIRS = (
    ("first", "last"), ("earliest", "latest"), ("largest", "smallest"), ("biggest", "tiniest"),
    ("highest", "lowest"), ("most", "least"), ("oldest", "youngest"), ("longest", "shortest"),
    ("best", "worst"), ("before", "after"), ("north", "south"), ("east", "west"),
    ("northern", "southern"), ("eastern", "western"), ("increase", "decrease"),
    ("increased", "decreased"), ("maximum", "minimum"), ("major", "minor"), ("earlier", "later"),
    ("higher", "lower"), ("more", "less"), ("larger", "smaller"), ("bigger", "smaller"),
    ("longer", "shorter"), ("older", "younger"), ("ancient", "modern"), ("public", "private"),
    ("positive", "negative"), ("male", "female"), ("men", "women"), ("won", "lost"), ("win", "lose"),
    ("internal", "external"), ("upper", "lower"), ("inner", "outer"), ("strongest", "weakest"),
    ("richest", "poorest"), ("wealthiest", "poorest"), ("popular", "unpopular"),
    ("successful", "unsuccessful"), ("legal", "illegal"), ("opened", "closed"), ("accepted", "rejected"),
    ("supported", "opposed"), ("hottest", "coldest"), ("fastest", "slowest"), ("deepest", "shallowest"),
    ("widest", "narrowest"), ("heaviest", "lightest"), ("cheapest", "most expensive"),
    ("common", "rare"), ("domestic", "foreign"), ("import", "export"), ("imported", "exported"),
)
_ANTONYMS: dict[str, str] = {}
for _a, _b in _ANTONYM_PAIRS:
    _ANTONYMS.setdefault(_a, _b)
    _ANTONYMS.setdefault(_b, _a)

# Attributes a question can ask for, each with the words a paragraph that gives it would use.
_ATTRIBUTE_NOUNS: dict[str, tuple[str, ...]] = {
    "population": ("population", "inhabitants", "residents", "populous"),
    "area": ("area", "square", "km2", "km²", "sq", "acres", "hectares"),
    "height": ("height", "tall", "high", "feet", "ft", "metres", "meters", "m"),
    "elevation": ("elevation", "altitude", "above sea level"),
    "length": ("length", "long", "km", "miles", "kilometres", "kilometers"),
    "width": ("width", "wide", "breadth"),
    "depth": ("depth", "deep"),
    "weight": ("weight", "weigh", "weighs", "weighed", "kg", "pounds", "lb", "tons", "tonnes"),
    "age": ("age", "aged", "years old", "year-old"),
    "diameter": ("diameter", "radius"),
    "temperature": ("temperature", "degrees", "°"),
    "speed": ("speed", "mph", "km/h", "knots"),
    "budget": ("budget", "$", "dollars", "€", "£", "funding"),
    "salary": ("salary", "salaries", "wage", "paid", "earns", "earned"),
    "price": ("price", "priced", "cost", "$", "€", "£"),
    "currency": ("currency",),
    "motto": ("motto",),
    "nickname": ("nickname", "nicknamed", "known as", "called"),
    "mascot": ("mascot",),
    "anthem": ("anthem",),
    "capital": ("capital",),
    "revenue": ("revenue", "revenues", "turnover", "$"),
    "birthplace": ("born", "birthplace", "native"),
    "religion": ("religion", "religious", "church", "faith"),
}
_ATTRIBUTE_NOUN_RE = re.compile(r"\bthe (" + "|".join(_ATTRIBUTE_NOUNS) + r") of\b")
_HOW_ADJ: dict[str, tuple[str, ...]] = {
    "tall": ("tall", "height", "feet", "ft", "metres", "meters", "high"),
    "old": ("old", "age", "aged", "born", "year-old"),
    "heavy": ("heavy", "weight", "weigh", "weighs", "kg", "pounds", "tons", "tonnes"),
    "far": ("far", "distance", "miles", "km", "kilometres", "kilometers"),
    "fast": ("fast", "speed", "mph", "km/h", "knots"),
    "deep": ("deep", "depth"),
    "wide": ("wide", "width"),
}
# Swaps stay within a group of attributes the same sort of thing has, so the question stays
# sensible ('How old was Bell' -> 'How tall was Bell', never 'How fast').
_ATTRIBUTE_GROUPS = (
    frozenset({"population", "area", "elevation", "capital", "currency", "anthem", "motto"}),
    frozenset({"age", "salary", "birthplace", "religion", "nickname"}),
    frozenset({"height", "length", "width", "depth", "weight", "diameter", "temperature", "speed"}),
    frozenset({"budget", "price", "revenue", "salary"}),
)
_HOW_GROUPS = (frozenset({"old", "tall", "heavy"}), frozenset({"far", "fast"}),
               frozenset({"deep", "wide", "tall"}), frozenset({"large", "big", "high", "deep", "wide"}))
_HOW_ADJ_RE = re.compile(r"\b(How) (old|tall|heavy|far|fast|deep|wide|large|big|high)\b")


def _same_group(a: str, b: str, groups: Sequence[frozenset[str]]) -> bool:
    return any(a in g and b in g for g in groups)

_LATEST_YEAR = 2016  # SQuAD's paragraphs are from 2016: later years would be predictions
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_SEASONS = ("spring", "summer", "autumn", "winter")
_MONTH_BEFORE = re.compile(r"\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.? $")
_NUMBER_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")

_ORG_WORDS = frozenset(
    "University College School Institute Academy Company Corporation Corp Inc Ltd Group Party Church "
    "Council Association Society Foundation Museum Library Bank Records Airlines Airways Army Navy "
    "Force Department Ministry Agency Commission Committee Club Team League Federation Union Court "
    "Parliament Senate Congress Assembly Organization Organisation Board Bureau Office Hospital "
    "Orchestra Band Studios Studio Press Times News Network Channel Railway Railways".split()
)
_PERSON_TITLES = frozenset(
    "King Queen Prince Princess Pope Saint St Sir Lord Lady Emperor Empress President General "
    "Admiral Captain Duke Duchess Count Countess Bishop Archbishop Cardinal Father Dr Mr Mrs Ms "
    "Chancellor Governor Senator Judge Professor Sultan Caliph Tsar Czar Shah Pharaoh".split()
)
_FIRST_NAMES = frozenset(
    "John James Robert Michael William David Richard Joseph Thomas Charles Christopher Daniel "
    "Matthew Anthony Mark Paul Steven Andrew Kenneth Joshua George Kevin Brian Edward Ronald "
    "Timothy Jason Jeffrey Ryan Jacob Gary Nicholas Eric Stephen Jonathan Larry Justin Scott "
    "Frank Brandon Benjamin Samuel Gregory Alexander Patrick Jack Dennis Jerry Tyler Aaron Henry "
    "Peter Walter Harold Carl Arthur Roger Albert Louis Ludwig Johann Franz Frederick Friedrich "
    "Karl Wilhelm Pierre Jean Jacques Louis Napoleon Isaac Adam Martin Simon Victor Hugo Oscar "
    "Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Nancy Lisa Margaret "
    "Betty Sandra Ashley Dorothy Kimberly Emily Donna Michelle Carol Amanda Melissa Deborah "
    "Stephanie Rebecca Laura Sharon Cynthia Kathleen Amy Shirley Angela Helen Anna Anne Catherine "
    "Katherine Marie Sophia Victoria Alice Grace Rose Diana Julia Madonna Beyoncé Kelly Michelle "
    "Frédéric Wolfgang Giuseppe Giovanni Carlos Juan José Luis Muhammad Ali Ahmed".split()
)
_DEMONYMS = frozenset(
    "American British English French German Italian Spanish Portuguese Dutch Russian Chinese "
    "Japanese Korean Indian Pakistani Mexican Canadian Australian Irish Scottish Welsh Greek "
    "Roman Turkish Egyptian Persian Arab Arabic Polish Swedish Norwegian Danish Finnish Swiss "
    "Austrian Belgian Hungarian Czech Brazilian Argentine Israeli Iranian Iraqi Syrian African "
    "European Asian Christian Muslim Jewish Catholic Protestant Buddhist Hindu Soviet Byzantine "
    "Ottoman Mongol Norman Viking Celtic Latin Hebrew Sanskrit Tibetan Thai Vietnamese Filipino "
    "Nigerian Kenyan Ethiopian Cuban Chilean Peruvian Colombian Venezuelan Ukrainian Prussian".split()
)
_CONNECTORS = frozenset("of de von van der du la le da del di".split())
_STOP = frozenset(
    "a an the of in on at to for from by with and or is was are were be been being did do does "
    "what which who whom whose when where why how that this these those it its as into than then "
    "there their they he she his her him not no many much one also other after before during".split()
)

_POSSESSIVE = re.compile(r"['’]s?$")
_FOOTNOTE = re.compile(r"[^\W\d_]\d+\b")  # 'ICTY8': a footnote mark glued to a word
_WORD_RE = re.compile(r"[^\W_](?:[\w'’.\-&]*[^\W_])?")
_YEAR_RE = re.compile(r"(?<![\w.,$])(1[0-9]{3}|20[0-9]{2})(s?)(?![\w])")
_NUMBER_RE = re.compile(r"(?<![\w.,$£€])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w]|,\d)")
# "Who was the first ..." -> "Who was not the first ...": only where the wh-word is the subject.
_NEG_AUX_RE = re.compile(r"^(What|Who) (is|was|are|were|can|could|will|would|should|has|have|had) ([a-z]\w*)")
# "When was the tree selected?" -> "When was the tree not selected?": before the participle.
_NEG_PASSIVE_RE = re.compile(
    r"^(?:(?:In|By|During|From|For|At|On|To) )?(?:What|Which|When|Where|Why|How|Who)\b[^?,]*? (?:is|was|are|were) "
    r"((?:[\w'’\-]+ ){1,6}?)(?:(?:first|originally|actually|officially|also|finally|initially) )?"
    r"([a-z]{3,}ed|built|born|made|written|given|known|held|taken|sold|chosen|seen|found|begun|done|won|shown)\b"
)
_NEG_ED_RE = re.compile(r"^(Who|What|Which [a-z]+) ([a-z]{3,}ed)\b")
_NEG_BLOCK_ED = frozenset({"need", "used", "based", "called", "named", "red", "bed", "shed", "seed", "speed"})
_HAS_NEGATION = re.compile(r"\b(not|never|no|n't|none|nor|without)\b|n't\b", re.I)


def _occurs(needle: str, hay_lower: str) -> bool:
    """``needle`` as whole words in a lower-cased text."""
    n = needle.lower()
    start = 0
    while True:
        i = hay_lower.find(n, start)
        if i < 0:
            return False
        j = i + len(n)
        if (i == 0 or not hay_lower[i - 1].isalnum()) and (j >= len(hay_lower) or not hay_lower[j].isalnum()):
            return True
        start = i + 1


def _replace_at(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + new + text[end:]


def _match_case(new: str, old: str) -> str:
    return new[:1].upper() + new[1:] if old[:1].isupper() else new


# --- corpus statistics ----------------------------------------------------------------------------


@dataclass
class _Phrase:
    text: str
    start: int
    end: int


class Corpus:
    """Paragraphs by article and the statistics replacements are drawn from."""

    def __init__(self, examples: Iterable[Example]):
        self.paragraphs: dict[str, list[str]] = {}
        seen: set[tuple[str, str]] = set()
        for e in examples:
            key = (e.title, e.context)
            if key not in seen:
                seen.add(key)
                self.paragraphs.setdefault(e.title, []).append(e.context)
        # How often each word is seen lower-case vs capitalised mid-sentence: a capitalised word
        # at the start of a sentence is a name only if it is capitalised mid-sentence too.
        self.lower: Counter[str] = Counter()
        self.cap_mid: Counter[str] = Counter()
        place_hits: Counter[str] = Counter()
        totals: Counter[str] = Counter()
        paras = [(t, c) for t in self.paragraphs for c in self.paragraphs[t]]
        for _, c in paras:
            for m in _WORD_RE.finditer(c):
                w = m.group()
                if w[0].islower():
                    self.lower[w] += 1
                elif w[0].isupper() and not _sentence_start(c, m.start()):
                    self.cap_mid[w.lower()] += 1
        self.signature: dict[str, Counter[str]] = {}
        self._content: dict[str, set[str]] = {}
        self.entities: dict[str, list[tuple[str, str]]] = {}  # article -> [(phrase, kind)]
        self.by_kind: dict[str, list[str]] = defaultdict(list)
        self.years: dict[str, list[int]] = {}
        self.all_years: list[int] = []
        self.numbers: dict[tuple, list[str]] = defaultdict(list)
        ent_seen: dict[str, set[str]] = {}
        for title, c in paras:
            phrases = self.phrases(c)
            for p in phrases:
                totals[p.text] += 1
                # Distributional signature: the words either side, to rank replacements by how
                # alike they are used ('Beyoncé' is used like 'Solange', not like 'Dreamgirls').
                left = _WORD_RE.findall(c[max(0, p.start - 30) : p.start])
                right = _WORD_RE.findall(c[p.end : p.end + 30])
                sig = self.signature.setdefault(p.text, Counter())
                if left:
                    sig["L:" + left[-1].lower()] += 1
                if right:
                    sig["R:" + right[0].lower()] += 1
                if c[p.end : p.end + 2] in ("'s", "’s"):
                    sig["R:'s"] += 1
                before = c[max(0, p.start - 6) : p.start].lower().split()
                if before and before[-1] in ("in", "at", "from", "near", "to", "across", "into", "of"):
                    place_hits[p.text] += before[-1] != "of"
            ent_seen.setdefault(title, set()).update(p.text for p in phrases)
            for m in _YEAR_RE.finditer(c):
                if not m.group(2):
                    self.years.setdefault(title, []).append(int(m.group(1)))
            for m in _NUMBER_RE.finditer(c):
                if not _YEAR_RE.fullmatch(m.group(0)):
                    self.numbers[_number_shape(m.group(0))].append(m.group(0))
        self.place_ratio = {p: place_hits[p] / totals[p] for p in totals}
        global_seen: set[tuple[str, str]] = set()
        for title in self.paragraphs:
            ents = []
            for p in sorted(ent_seen.get(title, ())):
                k = self.entity_kind(p)
                ents.append((p, k))
                if (p, k) not in global_seen:
                    global_seen.add((p, k))
                    self.by_kind[k].append(p)
            self.entities[title] = ents
        for k in self.by_kind:
            self.by_kind[k].sort()
        self.all_years = sorted({y for ys in self.years.values() for y in ys})
        for shape in self.numbers:
            self.numbers[shape] = sorted(set(self.numbers[shape]))

    def phrases(self, text: str) -> list[_Phrase]:
        """Capitalised phrases (candidate named entities): runs of capitalised words joined by single
        spaces, with connectors such as 'of' inside ('University of Notre Dame') and a trailing
        number ('Super Bowl 50'); sentence-initial words count only if the corpus capitalises them
        mid-sentence more often than it writes them lower-case."""
        toks = [(m.group(), m.start(), m.end()) for m in _WORD_RE.finditer(text)]
        out: list[_Phrase] = []
        i = 0
        while i < len(toks):
            if not self._is_name_word(text, *toks[i]):
                i += 1
                continue
            j = i + 1
            while j < len(toks) and text[toks[j - 1][2] : toks[j][1]] == " ":
                w = toks[j][0]
                if self._is_name_word(text, *toks[j]):
                    j += 1
                elif w in _CONNECTORS and j + 1 < len(toks) and text[toks[j][2] : toks[j + 1][1]] == " " \
                        and self._is_name_word(text, *toks[j + 1]):
                    j += 2
                elif w.isdigit() and len(w) <= 3:
                    j += 1
                    break
                else:
                    break
            start, end = toks[i][1], toks[j - 1][2]
            poss = _POSSESSIVE.search(text, start, end)
            if poss:  # swap the name, keep the question's possessive
                end = poss.start()
            phrase = text[start:end]
            last = phrase.split()[-1] if phrase.split() else ""
            if (len(phrase) >= 2 and not phrase.isdigit() and phrase not in _PERSON_TITLES and phrase not in _MONTHS and phrase not in _WEEKDAYS
                    and len(last) > 1 and not _FOOTNOTE.search(phrase)):
                out.append(_Phrase(phrase, start, end))
            i = j
        return out

    def _is_name_word(self, text: str, w: str, start: int, end: int) -> bool:
        if not w[0].isupper():
            return False
        if w in _MONTHS or w in _WEEKDAYS:
            return False
        if _sentence_start(text, start):
            low = w.lower()
            if low in _STOP:
                return False
            # A word never seen in lower case is a name even with no mid-sentence evidence.
            return self.cap_mid[low] > self.lower[low] or self.lower[low] == 0
        return True

    def content_words(self, paragraph: str) -> set[str]:
        cw = self._content.get(paragraph)
        if cw is None:
            cw = self._content[paragraph] = _content_words(paragraph)
        return cw

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two phrases' neighbouring-word counts (0 when either is unseen)."""
        sa, sb = self.signature.get(a), self.signature.get(b)
        if not sa or not sb:
            return 0.0
        if len(sa) > len(sb):
            sa, sb = sb, sa
        dot = sum(v * sb.get(k, 0) for k, v in sa.items())
        if not dot:
            return 0.0
        na = sum(v * v for v in sa.values()) ** 0.5
        nb = sum(v * v for v in sb.values()) ** 0.5
        return dot / (na * nb)

    def entity_kind(self, phrase: str) -> str:
        """A coarse type, plus the word count, so a swap keeps the question's shape."""
        toks = phrase.split()
        n = min(len(toks), 3)
        if len(toks) == 1 and phrase.isupper() and len(phrase) >= 2 and re.fullmatch(r"[^\W\d_][^\W\d_&.]*", phrase):
            return "acronym"
        if any(t in _ORG_WORDS for t in toks):
            return f"org{n}"
        if toks[0] in _PERSON_TITLES or toks[0] in _FIRST_NAMES:
            return f"person{n}"
        if len(toks) == 1 and toks[0] in _DEMONYMS:
            return "demonym"
        if self.place_ratio.get(phrase, 0.0) >= 0.5:
            return f"place{n}"
        if len(toks) == 1 and phrase.isupper():
            return "code"  # 'R&B', 'IT-98-33': not interchangeable with plain acronyms
        return f"name{n}"


def _sentence_start(text: str, i: int) -> bool:
    j = i - 1
    while j >= 0 and text[j] in " \t\n\"'“‘(":
        j -= 1
    return j < 0 or text[j] in ".!?:;"


def _number_shape(s: str) -> tuple:
    whole, _, frac = s.partition(".")
    return ("," in whole, len(whole.replace(",", "")), bool(frac))


# --- adversarial perturbations --------------------------------------------------------------------

class Candidate(NamedTuple):
    question: str  # the perturbed question
    detail: str  # what changed, for reports
    old: str  # the replaced text ("" for an insertion)
    new: str  # the text put in its place


def _cand(question: str, start: int, end: int, new: str, detail: str) -> Candidate:
    return Candidate(_replace_at(question, start, end, new), detail, question[start:end], new.strip())


def _pick_absent(pool: Sequence[str], para_lower: str, rng: random.Random, *, avoid: Callable[[str], bool],
                 tries: int = 40) -> str | None:
    """A random member of ``pool`` that does not occur in the paragraph and is not avoided."""
    if not pool:
        return None
    for _ in range(min(tries, len(pool) * 2)):
        c = pool[rng.randrange(len(pool))]
        if not avoid(c) and not _occurs(c, para_lower):
            return c
    return None


def _anchored_names(e: Example, corpus: Corpus) -> Iterator[tuple[_Phrase, str]]:
    """The question's names that its paragraph uses too (only those anchor it there), with their kind;
    codes ('R&B') are left out: they have no interchangeable peers."""
    for p in corpus.phrases(e.question):
        if not re.search(r"(?<!\w)" + re.escape(p.text) + r"(?!\w)", e.context):
            continue
        kind = corpus.entity_kind(p.text)
        if kind != "code":
            yield p, kind


def _entity_swaps(e: Example, corpus: Corpus, para_lower: str, rng: random.Random) -> list[Candidate]:
    out = []
    for p, kind in _anchored_names(e, corpus):
        old_toks = {t.lower() for t in p.text.split()}
        q_lower = e.question.lower()

        def avoid(c: str, old_toks=old_toks, q_lower=q_lower) -> bool:
            return bool(old_toks & {t.lower() for t in c.split()}) or _occurs(c, q_lower)

        pool = [c for c, k in corpus.entities.get(e.title, ()) if k == kind]
        if len(pool) > 60:
            pool = rng.sample(pool, 60)
        cands = [c for c in pool if not avoid(c) and not _occurs(c, para_lower)]
        if not cands:  # nothing of the kind in the article: any of the corpus's
            glob = corpus.by_kind.get(kind, [])
            pool = rng.sample(glob, min(60, len(glob)))
            cands = [c for c in pool if not avoid(c) and not _occurs(c, para_lower)]
        if not cands:
            continue
        # One of the three used most like the original, so the question stays natural.
        cands.sort(key=lambda c: (-corpus.similarity(p.text, c), c))
        new = cands[rng.randrange(min(3, len(cands)))]
        if new:
            out.append(_cand(e.question, p.start, p.end, new, f"{kind}: {p.text!r} -> {new!r}"))
    return out


_SENTENCE_RE = re.compile(r"[^.!?]+(?:[.!?]+(?=\s|$)|$)")


def _sentences(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _SENTENCE_RE.finditer(text)]


_MIN_PARAGRAPH_SIMILARITY = 0.3


def _paragraph_entity_swaps(e: Example, corpus: Corpus, para_lower: str, rng: random.Random) -> list[Candidate]:
    """A name in the question swapped for another name of the same kind *from its own paragraph*.

    SQuAD 2.0's written unanswerable questions mostly keep every word in the text ("When did King
    Harold II conquer England?" over a paragraph where William conquers and Harold is defeated);
    ``entity`` swaps in a name the paragraph lacks, which a reader can reject by that absence
    alone. Here the new name never shares a sentence with an answer, and no sentence that names it
    holds most of the question's other content words (which would likely answer the new question).
    """
    ctx = e.context
    sents = _sentences(ctx)
    answer_spans = []
    for a in e.answers:
        for m in re.finditer(re.escape(a.text), ctx):
            answer_spans.append((m.start(), m.end()))
        answer_spans.append((a.start, a.start + len(a.text)))
    blocked = [(s0, s1) for s0, s1 in sents if any(s0 < a1 and a0 < s1 for a0, a1 in answer_spans)]
    answers_lower = [a.text.lower() for a in e.answers]
    q_lower = e.question.lower()
    by_text: dict[str, list[tuple[int, int]]] = defaultdict(list)  # the paragraph's names, where each occurs
    for c in corpus.phrases(ctx):
        by_text[c.text].append((c.start, c.end))
    out = []
    for p, kind in _anchored_names(e, corpus):
        old_toks = {t.lower() for t in p.text.split()}
        rest = _content_words(e.question[: p.start] + " " + e.question[p.end :]) - old_toks
        cands = []
        for c, where in sorted(by_text.items()):
            new_toks = {t.lower() for t in c.split()}
            if corpus.entity_kind(c) != kind or _occurs(c, q_lower) or any(
                    a[:5] == b[:5] for a in old_toks for b in new_toks if min(len(a), len(b)) >= 4):
                continue  # 'Tangut' -> 'Tanguts' is the same name
            if any(c.lower() in a or a in c.lower() for a in answers_lower):
                continue
            homes = [(s0, s1) for s0, s1 in sents if any(s0 <= c0 < s1 for c0, _ in where)]
            if any(h in blocked for h in homes):
                continue
            if rest and any(len(rest & _content_words(ctx[s0:s1])) * 2 > len(rest) for s0, s1 in homes):
                continue
            cands.append(c)
        # Only names the corpus uses alike ('Luther' -> 'Younger' is noise, not a question).
        scored = sorted(((corpus.similarity(p.text, c), c) for c in cands), key=lambda t: (-t[0], t[1]))
        scored = [(sim, c) for sim, c in scored if sim >= _MIN_PARAGRAPH_SIMILARITY]
        if scored:
            new = scored[rng.randrange(min(2, len(scored)))][1]
            out.append(_cand(e.question, p.start, p.end, new, f"paragraph_entity: {p.text!r} -> {new!r}"))
    return out


def _year_swaps(e: Example, corpus: Corpus, para_lower: str, rng: random.Random) -> list[Candidate]:
    out = []
    for m in _YEAR_RE.finditer(e.question):
        year, decade = int(m.group(1)), bool(m.group(2))
        if e.question[max(0, m.start() - 1) : m.start()] in ("-", "–", "/") or \
                e.question[m.end() : m.end() + 1] in ("-", "–", "/"):
            continue  # part of a range such as 2012-2013
        if not re.search(r"(?<!\d)" + m.group(0) + r"(?!\d)", e.context):
            continue
        if decade:
            if year % 10:
                continue
            opts = [year + d for d in range(-60, 70, 10) if d and 1000 <= year + d <= 2090]
            opts = [y for y in opts if not re.search(r"(?<!\d)" + str(y)[:3] + r"\d(?!\d)", e.context)]
            if opts:
                y = opts[rng.randrange(len(opts))]
                out.append(_cand(e.question, m.start(), m.end(), f"{y}s", f"decade: {m.group(0)!r} -> '{y}s'"))
            continue
        # Plausible replacements: years the corpus mentions within a lifetime of the original.
        # Same article first (years the topic is about), else the corpus; never into a future
        # the original does not reach.
        latest = max(year, _LATEST_YEAR)
        near = sorted({y for y in corpus.years.get(e.title, []) if y != year and abs(y - year) <= 75 and y <= latest})
        if not any(not re.search(r"(?<!\d)" + str(y) + r"(?!\d)", e.context) for y in near):
            near = [y for y in corpus.all_years if y != year and abs(y - year) <= 40 and y <= latest]
        cands = [str(y) for y in near if not re.search(r"(?<!\d)" + str(y) + r"(?!\d)", e.context)]
        if not cands:
            cands = [str(year + d) for d in (-13, -7, -4, 3, 6, 11) if not re.search(r"(?<!\d)" + str(year + d) + r"(?!\d)", e.context)]
        if cands:
            new = cands[rng.randrange(len(cands))]
            out.append(_cand(e.question, m.start(1), m.end(1), new, f"year: {m.group(1)!r} -> {new!r}"))
    return out


def _number_swaps(e: Example, corpus: Corpus, para_lower: str, rng: random.Random) -> list[Candidate]:
    out = []
    for m in _NUMBER_RE.finditer(e.question):
        s = m.group(0)
        if _YEAR_RE.fullmatch(s) or not re.search(r"(?<![\d,.])" + re.escape(s) + r"(?![\d]|,\d)", e.context):
            continue
        before, after = e.question[max(0, m.start() - 5) : m.start()], e.question[m.end() : m.end() + 1]
        if "/" in before + after or ":" in before + after or _MONTH_BEFORE.search(before):
            continue  # fractions, times and days of a month are not counts
        pool = corpus.numbers.get(_number_shape(s), [])

        def avoid(c: str, s=s) -> bool:
            return c == s

        new = None
        for _ in range(30):
            c = pool[rng.randrange(len(pool))] if pool else None
            if c is None:
                break
            if not avoid(c) and not re.search(r"(?<![\d,.])" + re.escape(c) + r"(?![\d]|,\d)", e.context):
                new = c
                break
        if new:
            out.append(_cand(e.question, m.start(), m.end(), new, f"number: {s!r} -> {new!r}"))
    for m in re.finditer(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b", e.question, re.I):
        w = m.group(0)
        if not _occurs(w, para_lower) or (w[0].isupper() and m.start() > 0):
            continue  # 'Solar Two' is a name
        opts = [n for n in _NUMBER_WORDS if n != w.lower() and not _occurs(n, para_lower)]
        if opts:
            new = _match_case(opts[rng.randrange(len(opts))], w)
            out.append(_cand(e.question, m.start(), m.end(), new, f"number: {w!r} -> {new!r}"))
    return out


def _date_swaps(e: Example, corpus: Corpus, para_lower: str, rng: random.Random) -> list[Candidate]:
    out = []
    for names, case_sensitive in ((_MONTHS, True), (_WEEKDAYS, True), (_SEASONS, False)):
        pat = re.compile(r"\b(" + "|".join(names) + r")\b", 0 if case_sensitive else re.I)
        for m in pat.finditer(e.question):
            w = m.group(0)
            if m.start() == 0 or not pat.search(e.context):
                continue  # 'May' opening a question is the verb; the paragraph must date things
            if not (w in e.context if case_sensitive else _occurs(w, para_lower)):
                continue
            absent = [n for n in names if n.lower() != w.lower()
                      and not (n in e.context if case_sensitive else _occurs(n, para_lower))]
            if absent:
                new = _match_case(absent[rng.randrange(len(absent))], w)
                out.append(_cand(e.question, m.start(), m.end(), new, f"date: {w!r} -> {new!r}"))
    return out


def _negations(e: Example, corpus: Corpus, para_lower: str, rng: random.Random) -> list[Candidate]:
    if _HAS_NEGATION.search(e.question):
        return []
    out = []
    passive = _NEG_PASSIVE_RE.match(e.question)
    m = _NEG_AUX_RE.match(e.question)
    if m and m.group(3) not in ("not", "never") and not (passive and passive.group(2) not in _NEG_BLOCK_ED):
        out.append(_cand(e.question, m.end(2), m.end(2), " not", f"negation: '{m.group(2)}' -> '{m.group(2)} not'"))
    m = passive
    if m and m.group(2) not in _NEG_BLOCK_ED:
        out.append(_cand(e.question, m.start(2), m.start(2), "not ", f"negation: 'not {m.group(2)}'"))
    m = _NEG_ED_RE.match(e.question)
    if m and m.group(2) not in _NEG_BLOCK_ED:
        out.append(_cand(e.question, m.start(2), m.start(2), "never ", f"negation: 'never {m.group(2)}'"))
    return out


def _antonym_swaps(e: Example, corpus: Corpus, para_lower: str, rng: random.Random) -> list[Candidate]:
    out = []
    for m in re.finditer(r"\b[a-z]+\b", e.question):
        w = m.group(0)
        ant = _ANTONYMS.get(w)
        before = e.question[max(0, m.start() - 4) : m.start()]
        after = e.question[m.end() :].lstrip()[:1]
        if ant and ((w in ("most", "least") and before != "the ") or (w == "longer" and before.endswith("no "))
                    or (w == "last" and after in ("?", ".", ""))):
            continue  # 'most scientists', 'no longer', 'how long did it last?' are not what the pair means
        # The paragraph must not use the antonym, or it might answer the flipped question.
        if ant and not _occurs(ant, para_lower) and not _occurs(ant, e.question.lower()):
            out.append(_cand(e.question, m.start(), m.end(), ant, f"antonym: {w!r} -> {ant!r}"))
    return out


def _attribute_swaps(e: Example, corpus: Corpus, para_lower: str, rng: random.Random) -> list[Candidate]:
    out = []

    def gives(cues: Sequence[str]) -> bool:
        return any(_occurs(c, para_lower) if c[0].isalnum() else c in para_lower for c in cues)

    for m in _ATTRIBUTE_NOUN_RE.finditer(e.question):
        noun = m.group(1)
        opts = sorted(n for n, cues in _ATTRIBUTE_NOUNS.items() if n != noun and not gives(cues)
                      and _same_group(noun, n, _ATTRIBUTE_GROUPS) and not _occurs(n, e.question.lower()))
        if opts:
            new = opts[rng.randrange(len(opts))]
            out.append(_cand(e.question, m.start(1), m.end(1), new, f"attribute: {noun!r} -> {new!r}"))
    m = _HOW_ADJ_RE.search(e.question)
    if m:
        adj = m.group(2)
        opts = sorted(a for a, cues in _HOW_ADJ.items() if a != adj and not gives(cues)
                      and _same_group(adj, a, _HOW_GROUPS))
        if opts:
            new = opts[rng.randrange(len(opts))]
            out.append(_cand(e.question, m.start(2), m.end(2), new, f"attribute: 'How {adj}' -> 'How {new}'"))
    return out


_PERTURB: dict[str, Callable[[Example, Corpus, str, random.Random], list[Candidate]]] = {
    "entity": _entity_swaps,
    "number": _number_swaps,
    "year": _year_swaps,
    "date": _date_swaps,
    "negation": _negations,
    "antonym": _antonym_swaps,
    "attribute": _attribute_swaps,
    "paragraph_entity": _paragraph_entity_swaps,
}


def adversarial_candidates(e: Example, corpus: Corpus, *, seed: int = 0,
                           methods: Sequence[str] = METHODS) -> dict[str, list[Candidate]]:
    """Every perturbation of ``e``'s question that applies, by method (for inspection and tests)."""
    para_lower = e.context.lower()
    out = {}
    for name in methods:
        rng = random.Random(f"{seed}:{name}:{e.id}")
        cands = [c for c in _PERTURB[name](e, corpus, para_lower, rng) if c.question != e.question]
        if cands:
            out[name] = cands
    return out


def _adversarial(e: Example, corpus: Corpus, cfg: NegativeConfig) -> Negative | None:
    by_method = adversarial_candidates(e, corpus, seed=cfg.seed, methods=cfg.methods)
    if not by_method:
        return None
    rng = random.Random(f"{cfg.seed}:adversarial:{e.id}")
    method = sorted(by_method)[rng.randrange(len(by_method))]
    c = by_method[method][rng.randrange(len(by_method[method]))]
    ex = Example(f"{e.id}_negA", e.title, e.context, c.question, (), is_impossible=True, kind="adversarial")
    return Negative(ex, "adversarial", method, e.id, c.detail, c.old, c.new)


# --- topical negatives ----------------------------------------------------------------------------


def _content_words(text: str) -> set[str]:
    return {w for w in normalize_answer(text).split() if w not in _STOP and len(w) > 2}


def _contains_answer(context: str, answers: Sequence[str]) -> bool:
    low = context.lower()
    norm = f" {normalize_answer(context)} "
    for a in answers:
        if a.lower() in low:
            return True
        na = normalize_answer(a)
        if na and f" {na} " in norm:
            return True
    return False


def _topical(e: Example, corpus: Corpus, cfg: NegativeConfig) -> Negative | None:
    """The question on the paragraph of its article that shares most words with it but lacks the answer.

    Sharing words makes the negative harder than a random other paragraph (the model cannot
    reject it just for being off-topic); lacking the answer text (raw or normalised) keeps the
    label right in all but paraphrased-answer cases.
    """
    paras = corpus.paragraphs.get(e.title, [])
    answers = [a.text for a in e.answers]
    cands = [(i, p) for i, p in enumerate(paras) if p != e.context and not _contains_answer(p, answers)]
    if not cands:
        return None
    q = _content_words(e.question)
    rng = random.Random(f"{cfg.seed}:topical:{e.id}")
    scored = [(len(q & corpus.content_words(p)), rng.random(), i, p) for i, p in cands]
    _, _, i, p = max(scored)
    ex = Example(f"{e.id}_negT", e.title, p, e.question, (), is_impossible=True, kind="topical")
    return Negative(ex, "topical", "other_paragraph", e.id, f"paragraph {i} of {e.title!r}")


_MAKERS: dict[str, Callable[[Example, Corpus, NegativeConfig], Negative | None]] = {
    "topical": _topical,
    "adversarial": _adversarial,
}


def _quotas(total: int, kinds: Sequence[str]) -> dict[str, int]:
    base, extra = divmod(total, len(kinds))
    return {k: base + (i < extra) for i, k in enumerate(kinds)}


def generate_negatives(
    examples: Sequence[Example], cfg: NegativeConfig, *, corpus: Corpus | Sequence[Example] | None = None
) -> tuple[list[Negative], NegativeReport]:
    """Unanswerable examples for ``examples`` (only answerable ones are used as sources).

    ``corpus``: the data paragraphs and replacements are drawn from (default: ``examples``);
    pass the whole training file when ``examples`` is a subset, so topical negatives can use
    paragraphs whose questions were not sampled.
    """
    t0 = time.perf_counter()
    if not isinstance(corpus, Corpus):
        corpus = Corpus(corpus if corpus is not None else examples)
    sources = [e for e in examples if e.has_answer and not e.kind]
    want = round(cfg.ratio * len(sources))
    quotas = _quotas(want, cfg.kinds)
    report = NegativeReport(requested=want, source_questions=len(sources))
    made: dict[str, list[Negative]] = {k: [] for k in cfg.kinds}
    iters: dict[str, Iterator[Example]] = {}
    for k in cfg.kinds:
        order = list(range(len(sources)))
        random.Random(f"{cfg.seed}:order:{k}").shuffle(order)
        iters[k] = (sources[i] for i in order)

    def fill(kind: str, n: int) -> int:
        got = 0
        while got < n:
            e = next(iters[kind], None)
            if e is None:
                break
            neg = _MAKERS[kind](e, corpus, cfg)
            if neg is not None:
                made[kind].append(neg)
                got += 1
        return got

    short = 0
    for k in cfg.kinds:
        short += quotas[k] - fill(k, quotas[k])
    for k in cfg.kinds:  # a kind that ran dry hands its share to the others
        if short:
            short -= fill(k, short)
    out = [n for k in cfg.kinds for n in made[k]]
    report.counts = {k: len(made[k]) for k in cfg.kinds}
    report.methods = dict(Counter(n.method for n in out))
    report.shortfall = short
    report.seconds = time.perf_counter() - t0
    return out, report


def with_negatives(
    examples: list[Example], cfg: NegativeConfig, *, corpus: Sequence[Example] | None = None
) -> tuple[list[Example], NegativeReport]:
    """``examples`` followed by their generated negatives (training order is shuffled later)."""
    negs, report = generate_negatives(examples, cfg, corpus=corpus)
    return list(examples) + [n.example for n in negs], report


__all__ = [
    "DEFAULT_METHODS", "KINDS", "METHODS", "Corpus", "Negative", "NegativeConfig", "NegativeReport", "adversarial_candidates",
    "generate_negatives", "with_negatives",
]
