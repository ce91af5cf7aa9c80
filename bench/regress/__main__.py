"""`python -m bench.regress`: the same gate as `python -m bench regress`."""
from bench.kit import Parser
from bench.regress.cli import configure_parser, main

parser = Parser(prog="python -m bench.regress")
configure_parser(parser)
raise SystemExit(main(parser.parse_args()))
