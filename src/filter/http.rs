//! The HTTP context: each callback hands the request's [`Flow`] the host and maps its answer
//! to an `Action`. Every decision is in the core (`crate::flow`).

use super::host::{self, ProxyHost};
use crate::flow::{Flow, Shared, Step};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

pub struct TollgateHttp {
    flow: Flow,
    shared: Rc<Shared>,
}

impl TollgateHttp {
    pub fn new(shared: Rc<Shared>) -> Self {
        TollgateHttp {
            flow: Flow::new(Rc::clone(&shared)),
            shared,
        }
    }
}

fn action(step: Step) -> Action {
    match step {
        Step::Continue => Action::Continue,
        Step::Pause => Action::Pause,
    }
}

impl Context for TollgateHttp {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if self.flow.on_call_response(
            &ProxyHost {
                metric_ids: &self.shared.metric_ids,
            },
            token,
            body_size,
        ) == Step::Continue
        {
            host::resume_request();
        }
    }
}

impl HttpContext for TollgateHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.flow.on_request_headers(
            &ProxyHost {
                metric_ids: &self.shared.metric_ids,
            },
            end_of_stream,
        ))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.flow.on_request_body(
            &ProxyHost {
                metric_ids: &self.shared.metric_ids,
            },
            body_size,
            end_of_stream,
        ))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.flow.on_response_headers(
            &ProxyHost {
                metric_ids: &self.shared.metric_ids,
            },
            end_of_stream,
        ))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.flow.on_response_body(
            &ProxyHost {
                metric_ids: &self.shared.metric_ids,
            },
            body_size,
            end_of_stream,
        ))
    }

    /// The end of every admitted call, also after an upstream error or a client abort.
    fn on_log(&mut self) {
        self.flow.on_log(&ProxyHost {
            metric_ids: &self.shared.metric_ids,
        });
    }
}
