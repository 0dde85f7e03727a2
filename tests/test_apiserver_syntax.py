"""Kubernetes' string-syntax rules (apiserver.syntax), each rule alone; where each applies to an
object's fields is tested with validation.
"""

from __future__ import annotations

import pytest

from apiserver.syntax import label_value_errors, qualified_name_errors

# ---- label key/value syntax ----

@pytest.mark.parametrize("key", ["a", "app", "A.b-c_D", "example.com/app", "k8s.io/x.y",
                                 "a" * 63, "x" * 253 + "/n", "1", "in", "notin"])
def test_valid_label_keys(key):
    assert qualified_name_errors(key) == []


@pytest.mark.parametrize("key,fragment", [
    ("", "name part must be non-empty"),
    ("-a", "name part must consist of alphanumeric"),
    ("a-", "name part must consist of alphanumeric"),
    ("a b", "name part must consist of alphanumeric"),
    ("a" * 64, "name part must be no more than 63 characters"),
    ("/a", "prefix part must be non-empty"),
    ("Example.com/a", "prefix part a lowercase RFC 1123 subdomain"),
    ("a/b/c", "a qualified name must consist of"),
    ("example.com/", "name part must be non-empty"),
])
def test_invalid_label_keys(key, fragment):
    assert any(fragment in m for m in qualified_name_errors(key)), qualified_name_errors(key)


@pytest.mark.parametrize("value,ok", [("", True), ("a", True), ("A-b_c.9", True), ("a" * 63, True),
                                      ("a" * 64, False), ("-a", False), ("a.", False),
                                      ("a b", False), ("a/b", False)])
def test_label_values(value, ok):
    assert (label_value_errors(value) == []) == ok
