import sys

from thanosql_pg.proxy.server import main

sys.exit(main())
