"""The official openai SDK against lmrs: chat (plain and streamed), completions, embeddings, and a
Responses API conversation on a server-side session.

    pip install openai
    python examples/openai_client.py [http://127.0.0.1:23333]
"""

import sys

from openai import OpenAI

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:23333"
client = OpenAI(base_url=base + "/v1", api_key="none")  # pass your --api-keys key here if the server has one
model = client.models.list().data[0].id

reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello in French."}],
                                       max_tokens=32, temperature=0)
print(reply.choices[0].message.content)

stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Count to five."}],
                                        max_tokens=48, stream=True, stream_options={"include_usage": True})
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    if chunk.usage:
        print(f"\n[{chunk.usage.completion_tokens} tokens]")

print(client.completions.create(model=model, prompt="The quick brown fox", max_tokens=16).choices[0].text)

emb = client.embeddings.create(model=model, input=["The sea is blue.", "Cats purr."])
print(len(emb.data), "embeddings of size", len(emb.data[0].embedding))

# The Responses API: the follow-up continues the server-side session (only its new input is prefilled).
r1 = client.responses.create(model=model, input="Name a fruit.", instructions="Be brief.", max_output_tokens=16)
r2 = client.responses.create(model=model, input="What color is it?", instructions="Be brief.",
                             previous_response_id=r1.id, max_output_tokens=16)
print(r2.output_text, f"[{r2.usage.input_tokens_details.cached_tokens} of {r2.usage.input_tokens} input tokens reused]")
