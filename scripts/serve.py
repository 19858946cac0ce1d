"""Serves a trained model on this machine: the studio (a page to write or draw with it) and OpenAI's
completions API.

  python scripts/serve.py --workdir=runs/shakespeare_cpu              # open http://127.0.0.1:8000
  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \
    -d '{"prompt": "ROMEO:", "max_tokens": 100, "temperature": 0.8, "n": 2}'

--host=0.0.0.0 makes it reachable from other machines: it has no authentication. --assistant=DRAFT_WORKDIR
(a small model with the same tokenizer) decodes the requests it can with assisted generation: greedy or
sampling, within both models' context, one choice if streamed; the text is the model's either way.
"""

from absl import flags

from gptjax import cli, serve

flags.DEFINE_string(
    "workdir", None, "A training or converted workdir (its latest checkpoint), or an HF model directory."
)
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (127.0.0.1: this machine only).")
flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free one).", lower_bound=0, upper_bound=65535)
flags.DEFINE_string("assistant", None, "A draft model's workdir for assisted generation (same tokenizer).")
flags.DEFINE_integer("num_assistant_tokens", 5, "Tokens the assistant proposes at a time.", lower_bound=1)
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    server = serve.make_server(
        FLAGS.workdir,
        FLAGS.host,
        FLAGS.port,
        assistant=FLAGS.assistant,
        num_assistant_tokens=FLAGS.num_assistant_tokens,
    )
    host, port = server.server_address[:2]
    print(f"serving {FLAGS.workdir} at http://{host}:{port} (the studio; API: /v1/completions)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    cli.run(main)
