"""Validating and normalising edit requests (EasyEdit's dict format) before anything is edited."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError


class RequestError(UserError, ValueError):
    pass


@dataclass
class EditRequest:
    prompt: str  # contains "{}" where the subject goes
    subject: str
    target_new: str  # as the model continues the prompt: with its leading space
    target_true: str | None = None
    case_id: object = None
    raw: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return fill(self.prompt, self.subject)

    def in_template(self, template: str) -> str:
        """The prompt, subject filled in, placed in a context template's ``{}``."""
        return fill(fill(template, self.prompt), self.subject)


def fill(template: str, text: str) -> str:
    """``template`` with its first ``{}`` replaced by ``text``; any other brace is literal text
    (``str.format`` would take ``{`` in a prompt for a field)."""
    return template.replace("{}", text, 1)


def with_leading_space(target: str) -> str:
    # Targets follow a prompt, so models produce " Paris", not "Paris" (a different token).
    return target if target[:1].isspace() else " " + target


def _string(value):
    if isinstance(value, dict):  # ROME's {"str": ...}
        value = value.get("str")
    return value


def normalize_request(request: dict, index: int = 0) -> EditRequest:
    """Check one EasyEdit request and return it normalised; raise RequestError naming the field."""
    where = f"request {index}"
    if not isinstance(request, dict):
        raise RequestError(f"{where}: expected a dict with prompt, subject and target_new")
    prompt, subject = request.get("prompt"), request.get("subject")
    target_new = _string(request.get("target_new"))
    for name, value in (("prompt", prompt), ("subject", subject), ("target_new", target_new)):
        if not isinstance(value, str) or not value.strip():
            raise RequestError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
    if "{}" not in prompt:
        if subject not in prompt:
            raise RequestError(f"{where}: field 'subject' {subject!r} does not occur in the prompt {prompt!r}")
        prompt = prompt.replace(subject, "{}", 1)
    if prompt.count("{}") != 1:
        raise RequestError(f"{where}: field 'prompt' must contain the subject (or '{{}}') once, got {prompt!r}")
    target_true = _string(request.get("ground_truth", request.get("target_true")))
    if isinstance(target_true, list):
        target_true = target_true[0] if target_true else None
    return EditRequest(
        prompt=prompt,
        subject=subject,
        target_new=with_leading_space(target_new),
        target_true=with_leading_space(target_true) if isinstance(target_true, str) and target_true.strip() else None,
        case_id=request.get("case_id"),
        raw=request,
    )


def normalize_requests(requests) -> list[EditRequest]:
    if isinstance(requests, dict):
        requests = [requests]
    if not requests:
        raise RequestError("no edit requests were given")
    return [normalize_request(r, i) for i, r in enumerate(requests)]
