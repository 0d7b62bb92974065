'use strict';

require('./step').run('start');
