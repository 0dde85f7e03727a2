"""Dynamic admission: the webhooks of ValidatingWebhookConfigurations and
MutatingWebhookConfigurations (admissionregistration.k8s.io/v1), called on
the registry's writes as kube-apiserver's admission plugins call them.

- ``matching``: rules, matchPolicy, namespaceSelector, objectSelector
- ``review``: the admission.k8s.io/v1 AdmissionReview sent and the response accepted
- ``client``: the bounded HTTPS call (timeout, response size, caBundle)
- ``webhooks``: the two plugins: mutating in order with JSON patches, validating at once
"""
