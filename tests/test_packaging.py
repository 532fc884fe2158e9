"""A plain (non-editable) install finds and loads the Lua library shipped inside the wheel, and the web
console's templates and static files (no CDN: every asset comes from the package)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_the_library_and_a_plain_install_loads_it(tmp_path, redis_url, prefix):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("stocksync-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "stocksync/lua/stocksync.lua" in names and "consumers/__init__.py" in names
    console = ROOT / "stocksync" / "api" / "console"
    shipped = sorted(str(p.relative_to(ROOT)) for folder in ("static", "templates") for p in (console / folder).iterdir())
    assert shipped and set(shipped) <= set(names), sorted(set(shipped) - set(names))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    script = (
        "import asyncio, stocksync, stocksync.functions as f\n"
        "from stocksync.api.console import assets, pages\n"
        "assert {'console.js', 'console.css', 'docs.js'} <= set(assets.ASSETS), sorted(assets.ASSETS)\n"
        "assert all(p.name + '.js' in assets.ASSETS and '<main id=\"main\">' in pages.render(p) for p in pages.PAGES)\n"
        "from stocksync.store import StockStore\n"
        "from stocksync.settings import Settings\n"
        f"assert stocksync.__file__.startswith({str(target)!r}), stocksync.__file__\n"
        "async def main():\n"
        f"    s = await StockStore.connect(Settings(redis_url={redis_url!r}, prefix={prefix!r}))\n"
        "    print((await s.set('A', 1, source='w')).status)\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
