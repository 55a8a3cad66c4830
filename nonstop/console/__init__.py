"""The web console (/console/, and / when http_server.dir has no index) and the player page (/players/).

The pages are plain files under www/ (small JavaScript modules, no build step) and the player's libraries
under vendor/ (mpegts.js and hls.js, built files from npm at the versions pinned in the Makefile's
console-vendor target). pages.py answers them on the HTTP server port; the console reads only the public HTTP
API (/api/v1/..., with its auth), mostly one compact summary (/api/v1/nonstop/summary, nonstop/api/nonstop.py).
"""
