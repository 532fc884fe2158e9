import sys

from stocksync.settings import SettingsError

from .cli import main
from .runner import use_event_loop

try:
    use_event_loop()  # uvloop when importable (STOCKSYNC_LOOP=asyncio: the standard loop)
except SettingsError as e:
    print(f"stocksync: {e}", file=sys.stderr)
    raise SystemExit(2) from None
raise SystemExit(main())
