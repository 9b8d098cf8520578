"""The console's HTML, built from strings: every value from outside goes through :func:`esc`.

There is no template engine (no runtime dependency for one page set), so the rule is simple:
a value reaches the markup only as ``esc(value)``, text and attributes alike, and nothing here
writes a ``<script>``, a ``style=`` or an ``on...=`` attribute (the Content-Security-Policy
forbids them anyway). Request texts are hostile by assumption: shown in a ``<pre>``, escaped.

The answers are shown blind, in the lease's ``order``, as "Answer A" and "Answer B": no
model name, no tier.
"""

from __future__ import annotations

import html

from escalator.contract.messages import Attempt
from escalator.review.queues import Lease, Outcome, QueueStat

#: Labels with a key: 1 to 9. Further labels are buttons without a key.
KEYS = 9
#: What each outcome of ``decide`` tells the reviewer, above their next item.
OUTCOME_TEXT: dict[Outcome, str] = {
    "done": "Decision recorded.",
    "duplicate": (
        "This item was already decided (or is being decided); the first decision stands and "
        "yours was not recorded."
    ),
    "lost": "Your lease expired; the item went back to the queue and nothing was recorded.",
    "invalid": "That label is not one of this item's labels; nothing was recorded.",
    "pending": (
        "Your decision was sent but not confirmed yet; it will be recorded once the message "
        "broker answers. If the console restarts before then, the item comes back to the "
        "queue unless the decision was in fact recorded."
    ),
}
NOTE_MAX_CHARS = 2000
#: The reasons of ``contract.reviews.REVIEW_REASONS`` in words that name no tier, so that the
#: reason does not tell which answer is the strong model's.
REASON_TEXT = {
    "strong_low_confidence": "the deciding answer was not confident",
    "review_label": "this label is always reviewed",
    "disagreement": "the answers disagree",
    "strong_refused": "the deciding model refused",
    "sampled_disagree": "measurement sample (the answers disagree)",
    "sampled_agree": "measurement sample (the answers agree)",
}


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _document(title: str, body: str, reviewer: str | None = None, csrf: str | None = None) -> str:
    header = ""
    if reviewer is not None and csrf is not None:
        header = (
            '<header><a href="/">Queues</a>'
            f'<span class="who">Signed in as {esc(reviewer)}</span>'
            '<form method="post" action="/logout" class="inline">'
            f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
            '<button type="submit">Sign out</button></form></header>'
        )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} - Escalator review</title>"
        '<link rel="stylesheet" href="/static/console.css">'
        '<script src="/static/console.js" defer></script>'
        f"</head><body>{header}<main>{body}</main></body></html>\n"
    )


def login_page(kind: str, message: str | None = None) -> str:
    secret = "Token" if kind == "token" else "Password"
    notice = f'<p class="notice error">{esc(message)}</p>' if message else ""
    body = (
        "<h1>Sign in to review</h1>"
        f"{notice}"
        '<form method="post" action="/login" class="login">'
        '<label>Reviewer <input name="reviewer" autocomplete="username" required '
        "autofocus></label>"
        f'<label>{secret} <input name="secret" type="password" '
        'autocomplete="current-password" required></label>'
        '<button type="submit">Sign in</button></form>'
    )
    return _document("Sign in", body)


def unauthorized_page() -> str:
    return _document(
        "Sign in needed",
        "<h1>Sign in needed</h1><p>This page needs a signed-in reviewer. "
        '<a href="/login">Sign in</a>.</p>',
    )


def message_page(title: str, text: str) -> str:
    return _document(title, f"<h1>{esc(title)}</h1><p>{esc(text)}</p>")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def queues_page(stats: list[QueueStat], reviewer: str, csrf: str) -> str:
    rows = "".join(
        f'<tr><td><a href="/queue/{esc(s.queue)}">{esc(s.queue)}</a></td>'
        f'<td class="num">{s.depth}</td><td class="num">{s.leased}</td>'
        f'<td class="num">{esc(_age(s.oldest_age_s))}</td></tr>'
        for s in stats
    )
    body = (
        "<h1>Review queues</h1>"
        '<table class="queues"><thead><tr><th>Queue</th><th>Waiting</th><th>Leased</th>'
        f"<th>Oldest</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return _document("Queues", body, reviewer, csrf)


def _answer(name: str, attempt: Attempt) -> str:
    if attempt.valid and attempt.label is not None:
        said = f'<span class="label">{esc(attempt.label)}</span>'
        conf = f'<span class="confidence">confidence {attempt.confidence:.2f}</span>'
    elif attempt.refused:
        said, conf = '<span class="label none">refused to answer</span>', ""
    else:
        said, conf = '<span class="label none">no valid answer</span>', ""
    return f'<div class="answer"><h3>{esc(name)}</h3>{said} {conf}</div>'


def item_page(lease: Lease, reviewer: str, csrf: str, outcome: Outcome | None = None) -> str:
    item = lease.item
    notice = (
        f'<p class="notice outcome-{esc(outcome)}">{esc(OUTCOME_TEXT[outcome])}</p>'
        if outcome
        else ""
    )
    answers = (item.cheap, item.strong)
    shown = "".join(
        _answer(f"Answer {letter}", answers[i]) for letter, i in zip("AB", lease.order, strict=True)
    )
    buttons = "".join(
        f'<button type="submit" name="label" value="{esc(label)}" class="pick" '
        f'data-key="{n}"><kbd>{n}</kbd> {esc(label)}</button>'
        if n <= KEYS
        else f'<button type="submit" name="label" value="{esc(label)}" class="pick">'
        f"{esc(label)}</button>"
        for n, label in enumerate(item.labels, start=1)
    )
    hidden = (
        f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
        f'<input type="hidden" name="lease" value="{esc(lease.id)}">'
    )
    queue = esc(lease.queue)
    body = (
        f"{notice}<h1>Queue: {queue}</h1>"
        f'<p class="meta">Request <code>{esc(item.request.id)}</code>; '
        'reason for review: <strong class="reason">'
        f"{esc(REASON_TEXT.get(item.reason, item.reason))}</strong></p>"
        f'<pre class="text" id="request-text">{esc(item.request.text)}</pre>'
        f'<section class="answers">{shown}</section>'
        f'<form method="post" action="/queue/{queue}/decide" class="decide">{hidden}'
        f'<div class="labels">{buttons}'
        '<button type="submit" name="neither" value="1" class="pick neither" data-key="0">'
        "<kbd>0</kbd> neither</button></div>"
        '<label class="note">Note (optional) <textarea name="note" rows="2" '
        f'maxlength="{NOTE_MAX_CHARS}"></textarea></label></form>'
        f'<form method="post" action="/queue/{queue}/skip" class="skip">{hidden}'
        '<button type="submit">Skip (give it back)</button></form>'
        '<p class="hint">Keys 1-9 pick a label, 0 is "neither" (not while typing a note).</p>'
    )
    return _document(f"Queue {lease.queue}", body, reviewer, csrf)


def empty_queue_page(queue: str, reviewer: str, csrf: str, outcome: Outcome | None) -> str:
    notice = (
        f'<p class="notice outcome-{esc(outcome)}">{esc(OUTCOME_TEXT[outcome])}</p>'
        if outcome
        else ""
    )
    body = (
        f"{notice}<h1>Queue: {esc(queue)}</h1>"
        '<p class="empty">Nothing waiting in this queue.</p><p><a href="/">Back to the queues</a>'
        "</p>"
    )
    return _document(f"Queue {queue}", body, reviewer, csrf)
