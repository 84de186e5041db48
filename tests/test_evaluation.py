"""Exact match normalisation: documented, and strict where it must be."""

from ftlearn.evaluation import exact_match, normalize, side_by_side


def test_normalize_case_punctuation_space():
    assert normalize("  Amber. ") == normalize("amber") == "amber"
    assert normalize("Yes!") == "yes"
    assert normalize("badger,  December, pottery") == normalize("Badger, December, Pottery.")


def test_normalize_keeps_content_differences():
    assert normalize("Amber river") != normalize("Amber")
    assert normalize("No") != normalize("Yes")


def test_json_key_order_does_not_matter_but_values_do():
    a = '{"town": "Varnholt", "river": "Amber"}'
    b = '{"river": "Amber",   "town": "Varnholt"}'
    c = '{"town": "Varnholt", "river": "Silver"}'
    assert normalize(a) == normalize(b)
    assert normalize(a) != normalize(c)


def test_exact_match_score():
    assert exact_match(["Amber", "no", "x"], ["amber.", "No", "y"]) == 2 / 3
    assert exact_match([], []) == 0.0


def test_side_by_side_has_a_column_per_model():
    table = side_by_side(["q1", "q2"], {"base": ["a", "b"], "instruct": ["c", "d"]}, width=10)
    assert table.splitlines()[0].split("|")[1].strip() == "base"
    assert len(table.splitlines()) == 4
