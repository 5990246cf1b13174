import sys

from smbgw_agent.daemon import main

sys.exit(main())
