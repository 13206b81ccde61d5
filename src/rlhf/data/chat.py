"""Conversations: check a list of `{"role", "content"}` messages, and turn one into the text a model reads.

The text comes from the tokenizer's chat template, applied exactly once (`Tokenizer.apply_chat`). A tokenizer
without a template - the built-in byte tokenizer included - uses the plain template below, which writes each
message as `"\\n\\n" + Label + ": " + content` (System / Human / Assistant) and asks for an answer with
`"\\n\\nAssistant:"`. That is the Anthropic HH-RLHF transcript layout, so an HH transcript and the same
conversation as messages become identical text:

    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    ->  "\\n\\nHuman: Hi\\n\\nAssistant: Hello."

Which tokens are trained comes from rendering prefixes: an assistant turn is the text that rendering the
conversation up to and including it adds to rendering the conversation before it with the generation prompt.
That needs a template under which a shorter conversation renders as a prefix of a longer one, which holds for
the common templates (ChatML, Llama, Gemma, Mistral); one that does not is reported, never trained on silently.
"""

from __future__ import annotations

from typing import Any

from rlhf.errors import DataError, UserError

ROLES = ("system", "user", "assistant")
PLAIN_LABELS = {"system": "System", "user": "Human", "assistant": "Assistant"}
PLAIN_GENERATION_PROMPT = "\n\nAssistant:"
# ShareGPT and other exports name roles differently; say which name to use rather than only "unknown role".
ROLE_HINTS = {
    "human": "user",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "ai": "assistant",
}

Message = dict[str, str]


def plain_template(messages: list[Message], add_generation_prompt: bool) -> str:
    """The documented template of tokenizers without one (see the module docstring)."""
    text = "".join(f"\n\n{PLAIN_LABELS[m['role']]}: {m['content']}" for m in messages)
    return text + (PLAIN_GENERATION_PROMPT if add_generation_prompt else "")


def is_conversation(value: Any) -> bool:
    """Does a field hold a conversation (a list) rather than text? Decides conversational schemas."""
    return isinstance(value, list)


def check_messages(path, line: int, value: Any, field: str) -> list[Message]:
    """`value` as a clean list of {role, content} messages, or a DataError saying what is wrong at `line`."""
    if not isinstance(value, list):
        kind = "a string" if isinstance(value, str) else type(value).__name__
        raise DataError(
            path,
            line,
            f"field {field!r} is {kind}, but this file's first row holds a conversation there; every row must be "
            'a list of {"role": ..., "content": ...} messages',
        )
    if not value:
        raise DataError(
            path, line, f"field {field!r} is an empty conversation; add its messages or remove the row"
        )
    out = []
    for i, m in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise DataError(
                path, line, f"{where} is not an object; write each message as {{'role', 'content'}}"
            )
        if "role" not in m or "content" not in m:
            missing = "role" if "role" not in m else "content"
            hint = (
                "; ShareGPT-style 'from'/'value' must be renamed to 'role'/'content'"
                if "from" in m or "value" in m
                else ""
            )
            raise DataError(path, line, f"{where} has no {missing!r} (keys: {', '.join(m) or 'none'}){hint}")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            hint = f"; use {ROLE_HINTS[role]!r}" if role in ROLE_HINTS else ""
            raise DataError(path, line, f"{where} has role {role!r}; roles are system, user, assistant{hint}")
        if not isinstance(content, str):
            kind = "null" if content is None else type(content).__name__
            raise DataError(
                path,
                line,
                f"{where} content is {kind}, expected a string (multimodal content parts are not supported)",
            )
        out.append({"role": role, "content": content})
    return out


def ends_with_assistant(path, line: int, messages: list[Message], field: str) -> None:
    if messages[-1]["role"] != "assistant":
        raise DataError(
            path,
            line,
            f"field {field!r} ends with a {messages[-1]['role']} turn; it must end with the assistant's answer",
        )


def split_at_first_answer(path, line: int, messages: list[Message], field: str) -> tuple[list, list]:
    """(prompt, rest) of an SFT conversation: the turns before its first assistant turn, and from there on."""
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
    if first is None:
        raise DataError(
            path,
            line,
            f"field {field!r} has no assistant turn, so there is nothing to train on; add the answer",
        )
    if first == 0:
        raise DataError(
            path, line, f"field {field!r} starts with an assistant turn; open it with a system or user turn"
        )
    return messages[:first], messages[first:]


def split_implicit(
    path, line: int, chosen: list[Message], rejected: list[Message]
) -> tuple[list, list, list]:
    """(prompt, chosen rest, rejected rest) of two whole conversations: the prompt is their shared messages, cut
    back to end just before an assistant turn (as `loader.split_implicit_prompt` does for HH transcripts)."""
    for field, conv in (("chosen", chosen), ("rejected", rejected)):
        ends_with_assistant(path, line, conv, field)
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    # The prompt ends where an answer begins: at the first differing message if it is the assistant's, else at
    # the last assistant turn before it (identical conversations: their last assistant turn).
    cut = min(shared, len(chosen) - 1, len(rejected) - 1)
    while cut > 0 and not (chosen[cut]["role"] == "assistant" and rejected[cut]["role"] == "assistant"):
        cut -= 1
    if cut == 0:
        raise DataError(
            path,
            line,
            "chosen and rejected share no turns before an assistant answer, so the prompt cannot be split off; "
            "give both the same opening turns, or store the prompt in its own 'prompt' field",
        )
    return chosen[:cut], chosen[cut:], rejected[cut:]


def render(tok, messages: list[Message], add_generation_prompt: bool) -> str:
    return tok.apply_chat(messages, add_generation_prompt) if messages else ""


def render_conversation(
    tok, prompt: list[Message], response: list[Message]
) -> tuple[str, list[tuple[str, bool]]]:
    """(prompt text, response segments as (text, trained)) of a conversation split into prompt and response.

    Assistant turns are trained (their closing end-of-turn token included); every other turn, and the template's
    text between turns, is not. Segments concatenate to the rendered whole conversation (minus trailing white
    space). Raises UserError if the template does not render prefixes as prefixes.
    """
    head = render(tok, prompt, add_generation_prompt=True)
    done, segments = head, []
    history = list(prompt)
    for m in response:
        history.append(m)
        if m["role"] != "assistant":
            continue
        before = render(tok, history[:-1], add_generation_prompt=True)
        after = render(tok, history, add_generation_prompt=False)
        if not (before.startswith(done) and after.startswith(before)):
            raise UserError(
                f"tokenizer {getattr(tok, 'path', '')!r}: its chat template does not render a conversation's start "
                "as a prefix of the whole, so assistant turns cannot be located; use a tokenizer whose template "
                "does (ChatML, Llama, Gemma, ...) or flatten the data to prompt/response text"
            )
        answer = after[len(before) :]
        trimmed = answer.rstrip()  # the line break after an end-of-turn token belongs to the next turn
        if before[len(done) :]:
            segments.append((before[len(done) :], False))
        segments.append((trimmed, True))
        done = before + trimmed
    return head, segments
