"""Kubernetes' string-syntax rules (apiserver.syntax): which strings are names, keys, label values,
ports, integers, percents, addresses, and the exact messages Kubernetes gives for the others.

Where each rule applies to an object's fields is tested with validation; here each rule alone.
"""

from __future__ import annotations

import pytest

from apiserver.syntax import (
    cidr_errors,
    config_key_errors,
    dns1035_label_errors,
    dns1123_label_errors,
    dns1123_subdomain_errors,
    env_var_name_errors,
    ip_errors,
    is_integer,
    label_value_errors,
    max_length_message,
    percent_errors,
    port_name_errors,
    qualified_name_errors,
)

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


# ---- DNS names ----

DNS1123_LABEL = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
DNS1123_SUBDOMAIN = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
DNS1035_LABEL = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
    "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")


@pytest.mark.parametrize("check,value,expected", [
    (dns1123_label_errors, "my-name", []),
    (dns1123_label_errors, "123-abc", []),
    (dns1123_label_errors, "a" * 63, []),
    (dns1123_label_errors, "a" * 64, ["must be no more than 63 characters"]),
    (dns1123_label_errors, "A" * 64, ["must be no more than 63 characters", DNS1123_LABEL]),
    (dns1123_label_errors, "a.b", [DNS1123_LABEL]),
    (dns1123_label_errors, "", [DNS1123_LABEL]),
    (dns1123_subdomain_errors, "example.com", []),
    (dns1123_subdomain_errors, "a" * 253, []),
    (dns1123_subdomain_errors, "a" * 254, ["must be no more than 253 characters"]),
    (dns1123_subdomain_errors, "a..b", [DNS1123_SUBDOMAIN]),
    (dns1123_subdomain_errors, "Foo", [DNS1123_SUBDOMAIN]),
    (dns1035_label_errors, "abc-123", []),
    (dns1035_label_errors, "1abc", [DNS1035_LABEL]),
    (dns1035_label_errors, "a" * 64, ["must be no more than 63 characters"]),
])
def test_dns_names(check, value, expected):
    assert check(value) == expected


def test_max_length_message():
    assert max_length_message(15) == "must be no more than 15 characters"


# ---- keys and ports ----

CONFIG_KEY = (
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  "
    "or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')")


@pytest.mark.parametrize("key,expected", [
    ("key.name", []), ("KEY_NAME", []), (".hidden", []), ("k" * 253, []),
    ("k" * 254, ["must be no more than 253 characters"]),
    ("a/b", [CONFIG_KEY]), ("", [CONFIG_KEY]),
    (".", ["must not be '.'"]), ("..", ["must not be '..'"]), ("..x", ["must not start with '..'"]),
])
def test_config_keys(key, expected):
    assert config_key_errors(key) == expected


@pytest.mark.parametrize("name,expected", [
    ("http", []), ("web-8080", []), ("a" * 15, []),
    ("a" * 16, ["must be no more than 15 characters"]),
    ("Http", ["must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"]),
    ("a--b", ["must not contain consecutive hyphens"]),
    ("8080", ["must contain at least one letter (a-z)"]),
    ("-a", ["must not begin or end with a hyphen"]),
])
def test_port_names(name, expected):
    assert port_name_errors(name) == expected


ENV_VAR_NAME = (
    "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or "
    "'.', and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', "
    "regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')")


@pytest.mark.parametrize("name,ok", [("MY_ENV.NAME", True), ("my.env-name", True), ("_1", True),
                                     ("1X", False), ("A B", False), ("", False)])
def test_env_var_names(name, ok):
    assert env_var_name_errors(name) == ([] if ok else [ENV_VAR_NAME])


# ---- numbers and addresses ----

@pytest.mark.parametrize("text,ok", [("0", True), ("-1", True), ("007", True), ("", False),
                                     ("+1", False), ("1.0", False), ("1e3", False), ("--1", False)])
def test_integers(text, ok):
    assert is_integer(text) == ok


@pytest.mark.parametrize("text,ok", [("1%", True), ("93%", True), ("150%", True), ("%", False),
                                     ("5", False), ("1.5%", False), ("-1%", False)])
def test_percents(text, ok):
    assert percent_errors(text) == ([] if ok else [
        "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or "
        "'93%', regex used for validation is '[0-9]+%')"])


@pytest.mark.parametrize("text,ok", [("10.9.8.7", True), ("2001:db8::ffff", True), ("::1", True),
                                     ("", False), ("None", False), ("1.2.3", False),
                                     ("10.0.0.0/8", False)])
def test_ip_addresses(text, ok):
    assert ip_errors(text) == ([] if ok else [
        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"])


@pytest.mark.parametrize("text,ok", [("10.9.8.0/24", True), ("10.9.8.1/24", True),
                                     ("2001:db8::/64", True),
                                     ("10.0.0.0/33", False), ("", False), ("x/8", False)])
def test_cidrs(text, ok):
    assert cidr_errors(text) == ([] if ok else [
        "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"])
