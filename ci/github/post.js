'use strict';

require('./step').run('stop');
